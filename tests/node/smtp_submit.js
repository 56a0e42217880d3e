#!/usr/bin/env node
// smtp_submit.js - Haven's submission service driven by nodemailer, the npm
// mail client nobody here wrote; arrival checked with imapflow. Run by
// tests/integration/test_smtp_nodemailer.sh, which starts a throw-away
// havend and passes it in the environment:
//   HAVEN_IMAP_PORT, HAVEN_SUBMISSION_PORT, HAVEN_SUBMISSIONS_PORT,
//   HAVEN_SENDER, HAVEN_SENDER_PASS, HAVEN_RCPT, HAVEN_RCPT_PASS
// Steps: STARTTLS + AUTH PLAIN on 587 (a multipart message with an
// attachment and UTF-8 text), implicit TLS + AUTH LOGIN on 465 (a raw
// message whose bytes must arrive unchanged behind the added trace
// headers), a wrong password (535), no AUTH (530). Any failure exits
// non-zero.
'use strict';

const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const nodemailer = require('nodemailer');
const { ImapFlow } = require('imapflow');

const env = (name) => {
    const v = process.env[name];
    if (!v) throw new Error(`${name} is not set (run tests/integration/test_smtp_nodemailer.sh)`);
    return v;
};
const HOST = '127.0.0.1';
const sender = { user: env('HAVEN_SENDER'), pass: env('HAVEN_SENDER_PASS') };
const rcpt = { user: env('HAVEN_RCPT'), pass: env('HAVEN_RCPT_PASS') };
const WAIT_MS = 60000; // generous: waits for arrival, never asserts a duration
const tls = { rejectUnauthorized: false }; // the instance's certificate is self-signed

let passed = 0;
const ok = (what) => {
    passed++;
    console.log(`ok   ${what}`);
};

function transport(opts) {
    return nodemailer.createTransport({
        host: HOST,
        connectionTimeout: 30000,
        greetingTimeout: 30000,
        socketTimeout: 30000,
        tls,
        ...opts,
    });
}

// Every copy of the message with this Message-ID in the recipient's INBOX,
// once at least one is there.
async function arrived(messageId) {
    const c = new ImapFlow({ host: HOST, port: Number(env('HAVEN_IMAP_PORT')), secure: false,
        auth: rcpt, logger: false, disableAutoIdle: true, tls });
    c.on('error', (err) => console.error(`imap client error: ${err.stack || err}`));
    await c.connect();
    try {
        const deadline = Date.now() + WAIT_MS;
        for (;;) {
            const lock = await c.getMailboxLock('INBOX');
            try {
                const uids = await c.search({ header: { 'message-id': messageId } }, { uid: true });
                if (uids.length > 0) {
                    const out = [];
                    for (const uid of uids) {
                        const m = await c.fetchOne(String(uid), { source: true }, { uid: true });
                        out.push(m.source);
                    }
                    return out;
                }
            } finally {
                lock.release();
            }
            if (Date.now() > deadline) return [];
            await new Promise((r) => setTimeout(r, 200));
        }
    } finally {
        await c.logout();
    }
}

// The trace header fields the server puts in front (Return-Path,
// Delivered-To, Received, each maybe folded) and the rest.
function splitAdded(raw) {
    const added = ['return-path', 'delivered-to', 'received'];
    const names = [];
    let pos = 0;
    for (;;) {
        const eol = raw.indexOf('\r\n', pos);
        if (eol < 0) break;
        const line = raw.subarray(pos, eol).toString('latin1');
        const colon = line.indexOf(':');
        const name = colon > 0 ? line.slice(0, colon).trim().toLowerCase() : '';
        if (!added.includes(name)) break;
        names.push(name);
        pos = eol + 2;
        while (raw[pos] === 0x20 || raw[pos] === 0x09) pos = raw.indexOf('\r\n', pos) + 2;
    }
    return { names, rest: raw.subarray(pos) };
}

async function main() {
    // 1. 587: STARTTLS required, AUTH PLAIN, a composed multipart message.
    {
        const t = transport({ port: Number(env('HAVEN_SUBMISSION_PORT')), secure: false,
            requireTLS: true, auth: sender, authMethod: 'PLAIN' });
        const messageId = `<${crypto.randomUUID()}@nodemailer.test>`;
        const attachment = crypto.randomBytes(3000);
        const info = await t.sendMail({
            from: sender.user,
            to: rcpt.user,
            subject: 'nodemailer über STARTTLS ✓',
            text: 'Grüße – sent by nodemailer with STARTTLS and AUTH PLAIN.\n',
            messageId,
            attachments: [{ filename: 'random.bin', content: attachment }],
        });
        assert.deepEqual(info.accepted, [rcpt.user]);
        assert.deepEqual(info.rejected, []);
        assert.match(info.response, /^250 /);
        t.close();
        const got = await arrived(messageId);
        assert.equal(got.length, 1, 'exactly one copy');
        const text = got[0].toString('latin1');
        assert.ok(text.includes(attachment.toString('base64').slice(0, 60)), 'attachment arrived');
        assert.match(text, /^Return-Path: <[^>]+>\r\n/i);
        ok('587 STARTTLS + AUTH PLAIN: multipart message delivered once');
    }
    // 2. 465: implicit TLS, AUTH LOGIN, raw bytes that must arrive unchanged.
    {
        const t = transport({ port: Number(env('HAVEN_SUBMISSIONS_PORT')), secure: true,
            auth: sender, authMethod: 'LOGIN' });
        const messageId = `<${crypto.randomUUID()}@nodemailer.test>`;
        const raw = Buffer.from(
            `From: <${sender.user}>\r\nTo: <${rcpt.user}>\r\nSubject: raw over 465\r\n` +
            `Message-ID: ${messageId}\r\nDate: Tue, 25 Nov 2025 12:00:00 +0000\r\n\r\n` +
            'line one\r\n.line starting with a dot\r\n\r\nlast line\r\n', 'latin1');
        const info = await t.sendMail({ envelope: { from: sender.user, to: [rcpt.user] }, raw });
        assert.deepEqual(info.accepted, [rcpt.user]);
        t.close();
        const got = await arrived(messageId);
        assert.equal(got.length, 1, 'exactly one copy');
        const { names, rest } = splitAdded(got[0]);
        assert.deepEqual(names.slice().sort(), ['delivered-to', 'received', 'return-path']);
        assert.ok(rest.equals(raw), `bytes differ:\n${rest.toString('latin1')}\n---\n${raw.toString('latin1')}`);
        ok('465 implicit TLS + AUTH LOGIN: bytes delivered unchanged, once');
    }
    // 3. A wrong password: 535, nothing sent.
    {
        const t = transport({ port: Number(env('HAVEN_SUBMISSION_PORT')), secure: false,
            requireTLS: true, auth: { user: sender.user, pass: 'wrong-password' } });
        await assert.rejects(t.sendMail({ from: sender.user, to: rcpt.user, text: 'x' }),
            (err) => err.code === 'EAUTH' && err.responseCode === 535);
        t.close();
        ok('wrong password refused with 535');
    }
    // 4. No AUTH on the submission port: MAIL refused with 530.
    {
        const t = transport({ port: Number(env('HAVEN_SUBMISSION_PORT')), secure: false,
            requireTLS: true });
        await assert.rejects(t.sendMail({ from: sender.user, to: rcpt.user, text: 'x' }),
            (err) => err.responseCode === 530);
        t.close();
        ok('no AUTH: MAIL refused with 530');
    }
    console.log(`${passed} steps passed`);
}

main().catch((err) => {
    console.error(`FAIL: ${err.stack || err}`);
    process.exit(1);
});

#!/usr/bin/env node
// imapflow_test.js - Haven's IMAP server driven by imapflow, an npm client
// nobody here wrote. Run by tests/integration/test_imap_imapflow.sh, which
// starts a throw-away havend and passes it in the environment:
//   HAVEN_IMAP_PORT, HAVEN_IMAPS_PORT, HAVEN_USER, HAVEN_PASS
// Three clients: A upgrades with STARTTLS, B uses implicit TLS (993 style),
// C stays in clear text from loopback and enables QRESYNC. Each step checks
// exact values (bytes, uids, flags, counts); any failure exits non-zero.
'use strict';

const assert = require('node:assert/strict');
const { ImapFlow } = require('imapflow');

const env = (name) => {
    const v = process.env[name];
    if (!v) throw new Error(`${name} is not set (run tests/integration/test_imap_imapflow.sh)`);
    return v;
};
const HOST = '127.0.0.1';
const PORT = Number(env('HAVEN_IMAP_PORT'));
const TLS_PORT = Number(env('HAVEN_IMAPS_PORT'));
const auth = { user: env('HAVEN_USER'), pass: env('HAVEN_PASS') };
const WAIT_MS = 30000; // generous: waits for a condition, never asserts a duration

let passed = 0;
const ok = (what) => {
    passed++;
    console.log(`ok   ${what}`);
};

function makeClient(opts) {
    const c = new ImapFlow({
        host: HOST,
        port: PORT,
        secure: false,
        auth,
        logger: false,
        disableAutoIdle: true, // IDLE only where the test asks for it
        tls: { rejectUnauthorized: false }, // the instance's certificate is self-signed
        ...opts,
    });
    c.on('error', (err) => {
        console.error(`client error: ${err.stack || err}`);
        process.exitCode = 1;
    });
    return c;
}

// Resolves with the first event `name` from emitter that passes test.
function nextEvent(emitter, name, test = () => true) {
    return new Promise((resolve, reject) => {
        const timer = setTimeout(() => {
            emitter.removeListener(name, on);
            reject(new Error(`no '${name}' event within ${WAIT_MS} ms`));
        }, WAIT_MS);
        function on(ev) {
            if (!test(ev)) return;
            clearTimeout(timer);
            emitter.removeListener(name, on);
            resolve(ev);
        }
        emitter.on(name, on);
    });
}

async function readAll(stream) {
    const chunks = [];
    for await (const chunk of stream) chunks.push(chunk);
    return Buffer.concat(chunks);
}

const ATTACHMENT = Buffer.from(Array.from({ length: 3000 }, (_, i) => (i * 7 + 3) % 256));
const b64 = ATTACHMENT.toString('base64').replace(/.{76}/g, '$&\r\n');
const MULTIPART = Buffer.from(
    'From: Alice Example <alice@example.org>\r\n' +
        'To: Bob <bob@example.org>, carol@example.org\r\n' +
        'Subject: =?UTF-8?Q?Quarterly_r=C3=A9sum=C3=A9?=\r\n' +
        'Date: Fri, 05 Jan 2024 10:00:00 +0000\r\n' +
        'Message-ID: <flow-1@example.org>\r\n' +
        'MIME-Version: 1.0\r\n' +
        'Content-Type: multipart/mixed; boundary="=_b1"\r\n' +
        '\r\n' +
        '--=_b1\r\n' +
        'Content-Type: text/plain; charset=utf-8\r\n' +
        'Content-Transfer-Encoding: 8bit\r\n' +
        '\r\n' +
        'The numbers are attached. Caf\u00e9 au lait.\r\n' +
        '--=_b1\r\n' +
        'Content-Type: application/octet-stream; name="data.bin"\r\n' +
        'Content-Disposition: attachment; filename="data.bin"\r\n' +
        'Content-Transfer-Encoding: base64\r\n' +
        '\r\n' +
        b64 +
        '\r\n--=_b1--\r\n',
    'utf8'
);
const plain = (i, subject, body) =>
    Buffer.from(
        `From: Sender ${i} <s${i}@example.org>\r\nTo: bob@example.org\r\nSubject: ${subject}\r\n` +
            `Date: Sat, 06 Jan 2024 1${i}:00:00 +0000\r\nMessage-ID: <flow-${i}@example.org>\r\n` +
            `\r\n${body}\r\n`
    );

async function main() {
    // ---- A: STARTTLS on the plain port ----
    const a = makeClient({ doSTARTTLS: true });
    await a.connect();
    assert.equal(a.secureConnection, true, 'A is on TLS after STARTTLS');
    for (const cap of ['IDLE', 'UIDPLUS', 'MOVE', 'CONDSTORE', 'QRESYNC', 'SPECIAL-USE', 'ESEARCH']) {
        assert.ok(a.capabilities.has(cap), `capability ${cap}`);
    }
    ok('A: connected with STARTTLS, logged in, capabilities as advertised');

    // list, with the special-use folders
    const list = await a.list();
    const byPath = new Map(list.map((m) => [m.path, m]));
    for (const [path, use] of [['Sent', '\\Sent'], ['Trash', '\\Trash'], ['Drafts', '\\Drafts'],
                               ['Junk', '\\Junk'], ['Archive', '\\Archive']]) {
        assert.ok(byPath.has(path), `listed ${path}`);
        assert.equal(byPath.get(path).specialUse, use, `${path} is ${use}`);
        assert.equal(byPath.get(path).specialUseSource, 'extension', `${path} from SPECIAL-USE`);
    }
    assert.ok(byPath.has('INBOX'));
    assert.equal(list.length, 6, `six mailboxes at first (${[...byPath.keys()]})`);
    ok('list: INBOX and the five special-use mailboxes');

    const created = await a.mailboxCreate(['Flow', 'Sub']);
    assert.equal(created.path, 'Flow/Sub');
    assert.equal(created.created, true);
    const list2 = await a.list({ statusQuery: { messages: true, uidNext: true } });
    const sub = list2.find((m) => m.path === 'Flow/Sub');
    assert.ok(sub, 'Flow/Sub listed');
    assert.equal(sub.delimiter, '/');
    assert.deepEqual(sub.parent, ['Flow']);
    assert.deepEqual(sub.status && { m: sub.status.messages, u: sub.status.uidNext }, { m: 0, u: 1 });
    ok('mailboxCreate Flow/Sub; list with STATUS (LIST-STATUS) shows it empty');

    let mb = await a.mailboxOpen('Flow/Sub');
    assert.equal(mb.path, 'Flow/Sub');
    assert.equal(mb.exists, 0);
    assert.equal(mb.uidNext, 1);
    assert.ok(mb.uidValidity > 0n);
    const validity = mb.uidValidity;
    ok('mailboxOpen: empty, uidNext 1');

    // append
    const idate = new Date('2024-01-05T10:00:00Z');
    const ap = await a.append('Flow/Sub', MULTIPART, ['\\Seen'], idate);
    assert.equal(ap.destination, 'Flow/Sub');
    assert.equal(ap.uid, 1);
    assert.equal(ap.uidValidity, validity);
    const bodies = { 1: MULTIPART };
    const subjects = ['weekly report', 'lunch plans', 'the pineapple question', 'weekly report, again'];
    for (let i = 2; i <= 5; i++) {
        bodies[i] = plain(i, subjects[i - 2], i === 4 ? 'Should we buy a pineapple?' : `Body ${i}.`);
        const r = await a.append('Flow/Sub', bodies[i]);
        assert.equal(r.uid, i);
    }
    ok('append: five messages, APPENDUID 1..5 with the mailbox UIDVALIDITY');

    // fetch: envelope, bodyStructure, source
    mb = await a.mailboxOpen('Flow/Sub');
    assert.equal(mb.exists, 5);
    const m1 = await a.fetchOne('1', {
        uid: true, flags: true, envelope: true, bodyStructure: true, source: true,
        internalDate: true, size: true,
    }, { uid: true });
    assert.ok(m1.source.equals(MULTIPART), 'source is byte for byte what was appended');
    assert.equal(m1.size, MULTIPART.length);
    assert.deepEqual([...m1.flags], ['\\Seen']);
    assert.equal(new Date(m1.internalDate).getTime(), idate.getTime());
    assert.equal(m1.envelope.subject, 'Quarterly r\u00e9sum\u00e9');
    assert.equal(m1.envelope.messageId, '<flow-1@example.org>');
    assert.equal(new Date(m1.envelope.date).toISOString(), '2024-01-05T10:00:00.000Z');
    assert.deepEqual(m1.envelope.from, [{ name: 'Alice Example', address: 'alice@example.org' }]);
    assert.deepEqual(m1.envelope.to.map((x) => x.address), ['bob@example.org', 'carol@example.org']);
    const bs = m1.bodyStructure;
    assert.equal(bs.type, 'multipart/mixed');
    assert.equal(bs.childNodes.length, 2);
    assert.equal(bs.childNodes[0].type, 'text/plain');
    assert.equal(bs.childNodes[0].part, '1');
    assert.equal(bs.childNodes[0].parameters.charset, 'utf-8');
    assert.equal(bs.childNodes[1].type, 'application/octet-stream');
    assert.equal(bs.childNodes[1].part, '2');
    assert.equal(bs.childNodes[1].encoding, 'base64');
    assert.equal(bs.childNodes[1].disposition, 'attachment');
    assert.equal(bs.childNodes[1].dispositionParameters.filename, 'data.bin');
    ok('fetchOne: source, size, flags, internal date, envelope and bodyStructure are exact');

    const dl = await a.download('1', '2', { uid: true });
    assert.ok(dl.content, 'part 2 found');
    assert.ok((await readAll(dl.content)).equals(ATTACHMENT), 'attachment decodes to the original');
    assert.equal(dl.meta.filename, 'data.bin');
    const text = await a.download('1', '1', { uid: true });
    // The CRLF before a boundary belongs to the boundary, not to the part.
    assert.equal((await readAll(text.content)).toString('utf8'), 'The numbers are attached. Caf\u00e9 au lait.');
    ok('download: the attachment and the text part come back exactly');

    const all = await a.fetchAll('1:*', { uid: true, source: true, envelope: true });
    assert.deepEqual(all.map((m) => m.uid), [1, 2, 3, 4, 5]);
    for (const m of all) assert.ok(m.source.equals(bodies[m.uid]), `source of uid ${m.uid}`);
    ok('fetchAll 1:*: all five sources byte for byte');

    // flags
    assert.equal(await a.messageFlagsAdd({ uid: '2:3' }, ['\\Flagged', '$Work'], { uid: true }), true);
    assert.equal(await a.messageFlagsRemove('3', ['$Work'], { uid: true }), true);
    assert.equal(await a.messageFlagsAdd('4', ['\\Answered'], { uid: true }), true);
    const flags = new Map((await a.fetchAll('1:*', { uid: true, flags: true })).map((m) => [m.uid, [...m.flags].sort()]));
    assert.deepEqual(Object.fromEntries(flags), {
        1: ['\\Seen'], 2: ['$Work', '\\Flagged'], 3: ['\\Flagged'], 4: ['\\Answered'], 5: [],
    });
    ok('messageFlagsAdd / messageFlagsRemove: exact flag sets afterwards');

    // search
    assert.deepEqual(await a.search({ flagged: true }, { uid: true }), [2, 3]);
    assert.deepEqual(await a.search({ keyword: '$Work' }, { uid: true }), [2]);
    assert.deepEqual(await a.search({ subject: 'weekly report' }, { uid: true }), [2, 5]);
    assert.deepEqual(await a.search({ body: 'pineapple' }, { uid: true }), [4]);
    assert.deepEqual(await a.search({ seen: false, answered: false }, { uid: true }), [2, 3, 5]);
    assert.deepEqual(await a.search({ or: [{ from: 's5@' }, { header: { 'message-id': 'flow-1' } }] }, { uid: true }), [1, 5]);
    assert.deepEqual(await a.search({ larger: 3000 }, { uid: true }), [1]);
    assert.deepEqual(await a.search({ uid: '3:*', flagged: false }, { uid: true }), [4, 5]);
    assert.deepEqual(await a.search({ keyword: '$Nothing' }, { uid: true }), []);
    // Non-ASCII: sent as a UTF-8 literal, matched against the decoded header.
    assert.deepEqual(await a.search({ subject: 'r\u00e9sum\u00e9' }, { uid: true }), [1]);
    assert.deepEqual(await a.search({ body: 'caf\u00e9 au' }, { uid: true }), [1]);
    ok('search: flags, keyword, subject, body, OR, header, size, uid ranges, UTF-8');

    // move and copy
    const archive = await a.status('Archive', { messages: true, uidValidity: true });
    const mv = await a.messageMove({ uid: '3' }, 'Archive', { uid: true });
    assert.equal(mv.destination, 'Archive');
    assert.equal(mv.uidValidity, archive.uidValidity);
    assert.deepEqual([...mv.uidMap], [[3, 1]]);
    const cp = await a.messageCopy({ uid: '4:5' }, 'Trash', { uid: true });
    assert.deepEqual([...cp.uidMap], [[4, 1], [5, 2]]);
    assert.equal((await a.status('Archive', { messages: true })).messages, 1);
    assert.equal((await a.status('Trash', { messages: true })).messages, 2);
    assert.equal(a.mailbox.exists, 4, 'the moved message left Flow/Sub');
    assert.equal(await a.messageDelete({ uid: '5' }, { uid: true }), true);
    assert.equal(a.mailbox.exists, 3);
    assert.deepEqual(await a.search({ all: true }, { uid: true }), [1, 2, 4]);
    await a.mailboxOpen('Archive');
    const moved = await a.fetchOne('*', { uid: true, source: true, flags: true });
    assert.equal(moved.uid, 1);
    assert.ok(moved.source.equals(bodies[3]));
    assert.deepEqual([...moved.flags], ['\\Flagged'], 'flags moved with the message');
    ok('messageMove / messageCopy (COPYUID uid maps), messageDelete; moved bytes and flags intact');

    // ---- B: implicit TLS; IDLE hears A's changes ----
    const b = makeClient({ port: TLS_PORT, secure: true });
    await b.connect();
    assert.equal(b.secureConnection, true);
    const inbox = await b.mailboxOpen('INBOX');
    assert.equal(inbox.exists, 0);
    ok('B: connected over implicit TLS, INBOX empty');

    const existsEv = nextEvent(b, 'exists', (e) => e.path === 'INBOX' && e.count === 1);
    const idling = b.idle(); // an APPEND before IDLE starts is told when it does
    await a.append('INBOX', plain(6, 'for the idler', 'Hello, idler.'));
    const ev = await existsEv;
    assert.equal(ev.prevCount, 0);
    ok('IDLE: B hears EXISTS 1 for A\'s APPEND');

    await a.mailboxOpen('INBOX');
    const flagsEv = nextEvent(b, 'flags', (e) => e.path === 'INBOX' && e.flags.has('\\Flagged'));
    await a.messageFlagsAdd('1', ['\\Flagged']);
    const fev = await flagsEv;
    assert.equal(fev.seq, 1);
    assert.equal(fev.uid, 1);
    assert.deepEqual([...fev.flags], ['\\Flagged']);
    ok('IDLE: B hears FETCH FLAGS for A\'s STORE');

    const expEv = nextEvent(b, 'expunge', (e) => e.path === 'INBOX');
    await a.messageDelete('1');
    const eev = await expEv;
    assert.equal(eev.seq, 1);
    ok('IDLE: B hears EXPUNGE for A\'s delete');
    await b.noop(); // ends IDLE
    await idling;
    assert.equal(b.mailbox.exists, 0);

    // ---- C: clear text from loopback, QRESYNC ----
    const c = makeClient({ doSTARTTLS: false, qresync: true });
    await c.connect();
    assert.equal(c.secureConnection, false);
    assert.ok(c.enabled.has('QRESYNC'), `enabled: ${[...c.enabled]}`);
    const cm = await c.mailboxOpen('Flow/Sub');
    assert.equal(cm.exists, 3);
    const hms = cm.highestModseq;
    assert.ok(typeof hms === 'bigint' && hms > 0n);
    await a.mailboxOpen('Flow/Sub');
    await a.messageFlagsAdd({ uid: '4' }, ['\\Seen'], { uid: true });
    const changed = await c.fetchAll('1:*', { uid: true, flags: true }, { uid: true, changedSince: hms });
    assert.deepEqual(changed.map((m) => [m.uid, [...m.flags].sort()]), [[4, ['\\Answered', '\\Seen']]]);
    assert.ok(changed[0].modseq > hms);
    ok('C: clear text from loopback; CONDSTORE fetch changedSince returns only the changed message');

    const expungeUid = nextEvent(c, 'expunge', (e) => e.path === 'Flow/Sub');
    await a.messageDelete({ uid: '2' }, { uid: true });
    await c.noop();
    const vev = await expungeUid;
    assert.equal(vev.vanished, true, 'QRESYNC: expunges arrive as VANISHED');
    assert.equal(vev.uid, 2);
    assert.equal(c.mailbox.exists, 2);
    ok('C: with QRESYNC the expunge arrives as VANISHED with the uid');

    // ---- logout ----
    await a.logout();
    await b.logout();
    await c.logout();
    assert.equal(a.usable, false);
    ok('logout: all three clients');
    console.log(`PASS: ${passed} steps`);
}

main().catch((err) => {
    console.error(`FAIL after ${passed} steps: ${err.stack || err}`);
    process.exit(1);
});

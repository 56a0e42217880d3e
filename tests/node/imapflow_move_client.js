// imapflow_move_client.js - an imapflow client that keeps working on an
// account while tests/integration/test_move.py moves it between stores:
// it adds the $Moved keyword to one message after another through the
// proxy, remembers every change the server acknowledged, reconnects when
// the session ends (BYE [UNAVAILABLE] at the move), and when the file
// HAVEN_STOP_FILE appears prints {"acked": [uids], "reconnects": n,
// "errors": [...]} on stdout and exits.
'use strict';
const fs = require('fs');
const { ImapFlow } = require('imapflow');

const PORT = Number(process.env.HAVEN_IMAP_PORT);
const USER = process.env.HAVEN_USER;
const PASS = process.env.HAVEN_PASS;
const STOP = process.env.HAVEN_STOP_FILE;
const UIDS = (process.env.HAVEN_UIDS || '').split(',').filter(Boolean).map(Number);

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function connect() {
    for (let i = 0; i < 100; i++) {
        const c = new ImapFlow({
            host: '127.0.0.1', port: PORT, secure: false, auth: { user: USER, pass: PASS },
            logger: false, disableAutoIdle: true, tls: { rejectUnauthorized: false },
        });
        c.on('error', () => {}); // a closed session shows up as a failed command below
        try {
            await c.connect();
            await c.mailboxOpen('INBOX');
            return c;
        } catch (e) {
            await sleep(100);
        }
    }
    throw new Error('cannot connect through the proxy');
}

async function main() {
    const acked = new Set();
    const errors = [];
    let reconnects = 0;
    let c = await connect();
    let i = 0;
    while (!fs.existsSync(STOP)) {
        const uid = UIDS[i % UIDS.length];
        i++;
        try {
            const ok = await c.messageFlagsAdd(String(uid), ['$Moved'], { uid: true });
            if (ok) acked.add(uid);
        } catch (e) {
            reconnects++;
            try { c.close(); } catch (e2) { /* already closed */ }
            try {
                c = await connect();
            } catch (e3) {
                errors.push(String(e3));
                break;
            }
        }
        if (!c.usable) {
            reconnects++;
            c = await connect();
        }
        await sleep(5);
    }
    try { await c.logout(); } catch (e) { /* gone */ }
    process.stdout.write(JSON.stringify({ acked: [...acked], reconnects, errors }) + '\n');
}

main().catch((e) => {
    process.stdout.write(JSON.stringify({ acked: [], reconnects: -1, errors: [String(e)] }) + '\n');
    process.exit(1);
});

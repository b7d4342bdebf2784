'use strict';
// Benchmark peer server: an OCPP central system built on the npm package
// `ocpp-rpc`, run side by side with the gateway so the benchmark can compare
// it against a server people would otherwise pick. It answers only the four
// actions the load sends (BootNotification, Heartbeat, StatusNotification,
// MeterValues), for both OCPP 1.6 and 2.0.1.
//
//   node server.js --port 9000 --host 127.0.0.1 [--tls-cert FILE --tls-key FILE]
//
// With --tls-cert and --tls-key it serves wss:// through Node's own TLS server
// (https.createServer), for the benchmark's TLS comparison.
//
// Prints one line `listening on HOST:PORT` once it accepts connections
// (--port 0 picks a free port, and the line shows which).

const fs = require('fs');
const https = require('https');
const { RPCServer } = require('ocpp-rpc');

function parseArgs(argv) {
    const opts = { host: '127.0.0.1', port: 9000, tlsCert: null, tlsKey: null };
    for (let i = 0; i < argv.length; i++) {
        const arg = argv[i];
        const value = argv[i + 1];
        if (arg === '--port') { opts.port = Number(value); i++; }
        else if (arg === '--host') { opts.host = value; i++; }
        else if (arg === '--tls-cert') { opts.tlsCert = value; i++; }
        else if (arg === '--tls-key') { opts.tlsKey = value; i++; }
        else {
            process.stderr.write(`unknown argument: ${arg}\nusage: node server.js [--port N] [--host ADDR] [--tls-cert FILE --tls-key FILE]\n`);
            process.exit(2);
        }
    }
    if ((opts.tlsCert === null) !== (opts.tlsKey === null)) {
        process.stderr.write(`--tls-cert and --tls-key go together\n`);
        process.exit(2);
    }
    if (!Number.isInteger(opts.port) || opts.port < 0 || opts.port > 65535) {
        process.stderr.write(`invalid --port\n`);
        process.exit(2);
    }
    return opts;
}

// The same payloads are schema-valid replies in both 1.6 and 2.0.1.
const handlers = {
    BootNotification: () => ({
        currentTime: new Date().toISOString(),
        interval: 300,
        status: 'Accepted',
    }),
    Heartbeat: () => ({ currentTime: new Date().toISOString() }),
    StatusNotification: () => ({}),
    MeterValues: () => ({}),
};

async function main() {
    const { host, port, tlsCert, tlsKey } = parseArgs(process.argv.slice(2));

    const server = new RPCServer({
        protocols: ['ocpp1.6', 'ocpp2.0.1'],
        // Validate requests (and our replies) against the OCPP JSON schemas,
        // as the gateway does, so both do comparable work per message.
        strictMode: true,
    });

    // No auth callback: every charge point is accepted on any path, and
    // ocpp-rpc takes the identity from the last path segment.
    server.on('client', (client) => {
        // A client that offered no subprotocol is let in with none, and then
        // nothing is validated; OCPP requires one, so close it.
        if (!client.protocol) {
            client.close({ code: 1002, reason: 'OCPP subprotocol required' });
            return;
        }
        for (const [method, handler] of Object.entries(handlers)) {
            client.handle(method, handler);
        }
    });

    let httpServer;
    if (tlsCert) {
        httpServer = https.createServer({
            cert: fs.readFileSync(tlsCert),
            key: fs.readFileSync(tlsKey),
        });
        httpServer.on('upgrade', server.handleUpgrade);
        await new Promise((resolve, reject) => {
            httpServer.once('error', reject);
            httpServer.listen(port, host, resolve);
        });
    } else {
        httpServer = await server.listen(port, host);
    }
    const addr = httpServer.address();
    process.stdout.write(`listening on ${host}:${addr.port}\n`);

    let stopping = false;
    const stop = async () => {
        if (stopping) return;
        stopping = true;
        // Charge points get a 1001 close; one that never completes the close
        // handshake must not keep the process alive.
        setTimeout(() => process.exit(0), 2000).unref();
        try {
            await server.close({ code: 1001 });
        } finally {
            process.exit(0);
        }
    };
    process.on('SIGTERM', stop);
    process.on('SIGINT', stop);
}

main().catch((err) => {
    process.stderr.write(`${err && err.stack || err}\n`);
    process.exit(1);
});

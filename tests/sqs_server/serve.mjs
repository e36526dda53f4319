// Runs fauxqs (an SQS emulator) for the SQS channel tests, reachable on 127.0.0.1 only.
//
//   node serve.mjs            (after `npm ci` in this folder)
//
// fauxqs always asks to listen on every interface, so every listen() of this process is narrowed to
// loopback before fauxqs is loaded. The port is SQS_SERVER_PORT, or one the system picks when that
// is unset or 0; the first line on stdout is {"port": N} once the server accepts requests. The
// server exits when its stdin closes, so it never outlives the test process that started it.
import { register } from "node:module";
import net from "node:net";

// fauxqs imports node:sqlite for its optional on-disk persistence, which these tests never use;
// Node before 22.13 has no such module (or only behind a flag), so give it a stand-in there.
try {
  await import("node:sqlite");
} catch {
  const standIn = "export class DatabaseSync { constructor() { throw new Error('no node:sqlite'); } }";
  const hooks = `export async function resolve(specifier, context, next) {
    if (specifier === "node:sqlite") {
      return { url: "data:text/javascript," + encodeURIComponent(${JSON.stringify(standIn)}), shortCircuit: true };
    }
    return next(specifier, context);
  }`;
  register("data:text/javascript," + encodeURIComponent(hooks), import.meta.url);
}

const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  if (args[0] !== null && typeof args[0] === "object") {
    args[0] = { ...args[0], host: "127.0.0.1" };
  }
  return listen.apply(this, args);
};

const { startFauxqs } = await import("fauxqs");
const port = Number.parseInt(process.env.SQS_SERVER_PORT ?? "0", 10);
const server = await startFauxqs({ port, host: "127.0.0.1", logger: false });
process.stdout.write(JSON.stringify({ port: server.port }) + "\n");

process.stdin.on("end", () => process.exit(0));
process.stdin.on("error", () => process.exit(0));
process.stdin.resume();

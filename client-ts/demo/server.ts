// A tiny static server for the demo page (and the browser tests): the page
// and its stylesheet from demo/, the compiled page script and SDK from
// build/. Loopback only. `npm run demo` runs it on 127.0.0.1:7403.

import { readFile } from 'node:fs/promises';
import { type Server, createServer } from 'node:http';
import { extname, join, normalize, sep } from 'node:path';
import { fileURLToPath } from 'node:url';

/** client-ts/, from build/demo/server.js. */
const ROOT = fileURLToPath(new URL('../../', import.meta.url));

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json',
};

/** Where a URL path is served from, or undefined for a 404. */
function locate(path: string): string[] | undefined {
  const clean = normalize(decodeURIComponent(path)).replace(/^([/\\])+/, '');
  if (clean.split(sep).includes('..')) return undefined;
  if (clean === '' || clean === 'index.html') return [join(ROOT, 'demo', 'index.html')];
  if (clean.startsWith(`demo${sep}`)) return [join(ROOT, clean), join(ROOT, 'build', clean)];
  if (clean.startsWith(`src${sep}`)) return [join(ROOT, 'build', clean)];
  return undefined;
}

/** Serves the demo on `host:port` (port 0: any free port). */
export async function serveDemo(port: number, host = '127.0.0.1'): Promise<{ server: Server; url: string }> {
  const server = createServer((req, res) => {
    void (async () => {
      const path = new URL(req.url ?? '/', 'http://x').pathname;
      for (const file of locate(path) ?? []) {
        try {
          const body = await readFile(file);
          res.writeHead(200, { 'content-type': TYPES[extname(file)] ?? 'application/octet-stream', 'cache-control': 'no-store' });
          res.end(body);
          return;
        } catch {
          // try the next place
        }
      }
      res.writeHead(404, { 'content-type': 'text/plain' });
      res.end('not found');
    })();
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve());
  });
  const addr = server.address();
  const bound = addr !== null && typeof addr === 'object' ? addr.port : port;
  return { server, url: `http://${host}:${bound}/` };
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const port = Number(process.env['PORT'] ?? 7403);
  const { url } = await serveDemo(port);
  const broker = process.env['CONFAB_WS_URL'] ?? 'ws://127.0.0.1:7402/ws';
  console.log(`Confab demo on ${url} (broker ${broker}; another one: ${url}?broker=ws://HOST:PORT/ws)`);
}

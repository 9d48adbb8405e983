// A loopback TCP proxy in front of the broker's WebSocket port, to lose
// what the broker sends (acknowledgements in flight) and to cut
// connections at a chosen moment.

import { type AddressInfo, type Server, type Socket, createServer, connect } from 'node:net';

export class Proxy {
  private readonly pairs = new Set<[Socket, Socket]>();
  /** While true, bytes from the broker are dropped (the client hears nothing). */
  blackholeDown = false;

  private constructor(private readonly server: Server) {}

  static async start(targetPort: number): Promise<Proxy> {
    let proxy: Proxy | undefined;
    const server = createServer((client) => {
      const upstream = connect({ host: '127.0.0.1', port: targetPort });
      const pair: [Socket, Socket] = [client, upstream];
      proxy?.pairs.add(pair);
      client.on('data', (d) => upstream.write(d));
      upstream.on('data', (d) => {
        if (!proxy?.blackholeDown) client.write(d);
      });
      const end = (): void => {
        client.destroy();
        upstream.destroy();
        proxy?.pairs.delete(pair);
      };
      client.on('close', end);
      upstream.on('close', end);
      client.on('error', end);
      upstream.on('error', end);
    });
    proxy = new Proxy(server);
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    return proxy;
  }

  get port(): number {
    return (this.server.address() as AddressInfo).port;
  }

  /** Connections open now. */
  get open(): number {
    return this.pairs.size;
  }

  /** Cuts every connection (both sides see a reset). */
  cutAll(): void {
    for (const [a, b] of this.pairs) {
      a.destroy();
      b.destroy();
    }
    this.pairs.clear();
  }

  async stop(): Promise<void> {
    this.cutAll();
    await new Promise<void>((r) => this.server.close(() => r()));
  }
}

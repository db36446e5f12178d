// A bare newline-delimited JSON client over a UNIX socket: send a line, get the next line back.
// It is the client side of the echo floor, and the "raw" agent client that separates what the
// agent costs from what the product's AgentClient adds (envelope and result validation).
// Replies come back in order on one connection, so a FIFO of waiters is enough for pipelining.
import { connect, type Socket } from 'node:net';

export class LineClient implements AsyncDisposable {
  private readonly waiters: ((line: string) => void)[] = [];
  private buf = '';
  /** Where to look for the next newline: a multi-megabyte reply is scanned once, not per chunk. */
  private scanFrom = 0;
  private closedErr: Error | undefined;

  private constructor(private readonly socket: Socket) {
    socket.setEncoding('utf8');
    socket.on('data', (text: string) => {
      this.buf += text;
      let nl: number;
      while ((nl = this.buf.indexOf('\n', this.scanFrom)) !== -1) {
        const line = this.buf.slice(0, nl);
        this.buf = this.buf.slice(nl + 1);
        this.scanFrom = 0;
        const w = this.waiters.shift();
        if (w) w(line);
      }
      this.scanFrom = this.buf.length;
    });
    socket.on('error', (err) => {
      this.closedErr = err;
      socket.destroy();
    });
    socket.on('close', () => {
      this.closedErr ??= new Error('connection closed');
      // Waiters left behind get an empty line; callers treat that as an error.
      for (const w of this.waiters.splice(0)) w('');
    });
  }

  static connect(path: string): Promise<LineClient> {
    return new Promise((resolve, reject) => {
      const s = connect(path);
      s.once('connect', () => {
        s.off('error', reject);
        resolve(new LineClient(s));
      });
      s.once('error', reject);
    });
  }

  get closed(): boolean {
    return this.closedErr !== undefined;
  }

  /** Send one line (without its newline); resolves with the next reply line. */
  request(line: string): Promise<string> {
    if (this.closedErr) return Promise.reject(this.closedErr);
    const p = new Promise<string>((resolve) => this.waiters.push(resolve));
    this.socket.write(line + '\n');
    return p;
  }

  /** request(), then JSON.parse the reply (what any client of a JSON protocol does at least). */
  async call(line: string): Promise<Record<string, unknown>> {
    const reply = await this.request(line);
    if (reply === '') throw this.closedErr ?? new Error('no reply');
    return JSON.parse(reply) as Record<string, unknown>;
  }

  close(): Promise<void> {
    return new Promise((resolve) => {
      if (this.socket.destroyed) return resolve();
      this.socket.once('close', () => resolve());
      this.socket.end();
    });
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

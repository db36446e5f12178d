import type { Socket } from 'node:net';

export type FlowMode = 'flow' | 'blackhole' | 'pause';

/**
 * The controls of one direction of a link. `blackhole()` drops bytes (and FINs) while the
 * connection stays open, a half-open link: the stream is corrupt from then on, so use it where
 * the client is expected to give the connection up. `pause()` holds bytes back and delivers them
 * on heal, as TCP's retransmissions would after a partition ends.
 */
export class LinkDirection {
  readonly label: string;
  #delayMs = 0;
  #mode: FlowMode = 'flow';
  #forwarded = 0;
  #dropped = 0;
  readonly #pipes = new Set<Pipe>();

  constructor(label: string) {
    this.label = label;
  }

  get delayMs(): number {
    return this.#delayMs;
  }
  get mode(): FlowMode {
    return this.#mode;
  }
  /** Bytes delivered in this direction. */
  get bytesForwarded(): number {
    return this.#forwarded;
  }
  /** Bytes a blackhole swallowed in this direction. */
  get bytesDropped(): number {
    return this.#dropped;
  }

  /** Each chunk is delivered `ms` after it arrived, in order; applies to bytes arriving from now on. */
  delay(ms: number): void {
    if (!(ms >= 0)) throw new RangeError(`delay must be >= 0 ms, not ${ms}`);
    this.#delayMs = ms;
  }
  blackhole(): void {
    this.#setMode('blackhole');
  }
  pause(): void {
    this.#setMode('pause');
  }
  /** Bytes flow again (held ones first), each still delayed as before. */
  flow(): void {
    this.#setMode('flow');
  }
  /** No delay, bytes flow (held ones first). */
  heal(): void {
    this.#delayMs = 0;
    this.#setMode('flow');
  }

  /** @internal */ attach(pipe: Pipe): void {
    this.#pipes.add(pipe);
  }
  /** @internal */ detach(pipe: Pipe): void {
    this.#pipes.delete(pipe);
  }
  /** @internal */ count(forwarded: number, dropped: number): void {
    this.#forwarded += forwarded;
    this.#dropped += dropped;
  }

  #setMode(mode: FlowMode): void {
    this.#mode = mode;
    for (const pipe of this.#pipes) pipe.update();
  }
}

type Item = { due: number; chunk: Buffer | null };

/** One direction of one connection: reads `src`, writes `dst` as its LinkDirection says. */
class Pipe {
  readonly #src: Socket;
  readonly #dst: Socket;
  readonly #control: LinkDirection;
  readonly #queue: Item[] = [];
  #timer: NodeJS.Timeout | undefined;
  #waitingDrain = false;

  constructor(src: Socket, dst: Socket, control: LinkDirection) {
    this.#src = src;
    this.#dst = dst;
    this.#control = control;
    control.attach(this);
    src.on('data', (chunk: Buffer) => this.#push(chunk));
    src.on('end', () => this.#push(null));
    dst.on('drain', () => {
      this.#waitingDrain = false;
      this.update();
    });
  }

  /** Re-applies the direction's mode: flushes due items and starts or stops reading. */
  update(): void {
    const held = this.#control.mode === 'pause' || this.#waitingDrain;
    if (held) this.#src.pause();
    else this.#src.resume();
    this.#flush();
  }

  dispose(): void {
    clearTimeout(this.#timer);
    this.#control.detach(this);
  }

  #push(chunk: Buffer | null): void {
    if (this.#control.mode === 'blackhole') {
      this.#control.count(0, chunk?.length ?? 0);
      return;
    }
    this.#queue.push({ due: performance.now() + this.#control.delayMs, chunk });
    this.#flush();
  }

  #flush(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    while (this.#control.mode !== 'pause' && !this.#waitingDrain && !this.#dst.destroyed) {
      const head = this.#queue[0];
      if (head === undefined) return;
      const wait = head.due - performance.now();
      if (wait > 0) {
        this.#timer = setTimeout(() => this.#flush(), Math.ceil(wait));
        return;
      }
      this.#queue.shift();
      if (head.chunk === null) {
        this.#dst.end();
        continue;
      }
      this.#control.count(head.chunk.length, 0);
      if (!this.#dst.write(head.chunk)) {
        this.#waitingDrain = true;
        this.#src.pause();
      }
    }
  }
}

/** One proxied connection: a client socket, its upstream socket, and a pipe each way. */
export class Connection {
  readonly client: Socket;
  readonly upstream: Socket;
  readonly #pipes: Pipe[];
  readonly #onGone: () => void;

  constructor(client: Socket, upstream: Socket, toTarget: LinkDirection, toClient: LinkDirection, onGone: () => void) {
    this.client = client;
    this.upstream = upstream;
    this.#onGone = onGone;
    this.#pipes = [new Pipe(client, upstream, toTarget), new Pipe(upstream, client, toClient)];
    for (const [side, other] of [
      [client, upstream],
      [upstream, client],
    ] as const) {
      // A reset on one side is passed on as a reset, so the peer sees what a direct link would show.
      side.on('error', () => this.reset());
      side.on('close', () => {
        if (!other.destroyed) other.destroy();
        this.#dispose();
      });
    }
    // The client was paused on accept so that no byte is read before the current mode applies.
    for (const pipe of this.#pipes) pipe.update();
  }

  reset(): void {
    for (const socket of [this.client, this.upstream]) {
      if (!socket.destroyed) socket.resetAndDestroy();
    }
    this.#dispose();
  }

  #dispose(): void {
    for (const pipe of this.#pipes) pipe.dispose();
    this.#onGone();
  }
}

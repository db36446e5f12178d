import { connect, createServer, type Socket } from 'node:net';
import { join } from 'node:path';
import { existsSync, rmSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { z } from 'zod';
import { asBatonError, BatonError, GrantSchema, type Grant, type VmInfo, type VmState } from '@baton/core';
import { LineReader } from '../../api/line-reader.js';
import { serveControl } from './control.js';
import { emitter, Guest } from './guest.js';
import { CONTROL_SOCKET, INCOMING_SOCKET } from './layout.js';

/**
 * A sim VM run by its host's hypervisor driver (the agent), as libvirt runs QEMU: created paused
 * (fresh, or incoming and waiting for a migration's state), unpaused with the grants it writes
 * under, paused, sent to another host, destroyed, through its control socket. While running and
 * before its write deadline it appends `vm host token seq t` to each exclusive disk through the
 * disk's FenceGuard. Events go to stdout as JSON lines.
 */
const { values } = parseArgs({
  options: {
    dir: { type: 'string' },
    uuid: { type: 'string' },
    name: { type: 'string' },
    host: { type: 'string', default: 'local' },
    incoming: { type: 'boolean', default: false },
    'interval-ms': { type: 'string', default: '20' },
  },
});

const emit = emitter(values.name ?? 'vm');

const ResumeSchema = z.object({ grants: z.array(GrantSchema), validUntil: z.number().nullable() });
const SendSchema = z.object({ to: z.string(), delayMs: z.number().int().nonnegative().default(0), fail: z.boolean().default(false) });
/** Faults for the sends and unpauses to come (tests and the demo set them through the control socket); each inject replaces the last. */
const FaultsSchema = z.strictObject({
  op: z.literal('inject'),
  failSends: z.number().int().nonnegative().default(0),
  sendDelayMs: z.number().int().nonnegative().default(0),
  failResumes: z.number().int().nonnegative().default(0),
});
const faults = { failSends: 0, sendDelayMs: 0, failResumes: 0 };

class ManagedVm {
  state: VmState;
  /** Unpaused at least once in this process's life (a copy created for a migration has not, until its resume). */
  ran = false;
  readonly guest = new Guest(values.name!, values.host, emit);

  constructor(incoming: boolean) {
    this.state = incoming ? 'incoming' : 'paused';
  }

  get seq(): number {
    return this.guest.seq;
  }

  info(): VmInfo {
    return { uuid: values.uuid!, name: values.name!, pid: process.pid, state: this.state, seq: this.seq, ran: this.ran };
  }

  resume(grants: Grant[], validUntil: number | null): VmInfo {
    if (this.state === 'incoming') throw new BatonError('INVALID_REQUEST', 'an incoming VM has no state to run yet');
    if (faults.failResumes > 0) {
      // As QEMU's `cont` fails when a disk cannot be reopened for writing on this host: still paused.
      faults.failResumes--;
      emit({ event: 'resume-failed', seq: this.seq });
      throw new BatonError('IO_ERROR', `VM ${values.name} cannot be unpaused (injected): a disk could not be reopened for writing`);
    }
    this.guest.holdGrants(grants);
    this.guest.validUntil = validUntil ?? Infinity;
    this.state = 'running';
    this.ran = true;
    emit({ event: 'running', seq: this.seq, grants });
    return this.info();
  }

  /** Disks plugged in or out; the VM's state (running or paused) stays as it is. */
  regrant(grants: Grant[]): VmInfo {
    if (this.state === 'incoming') throw new BatonError('INVALID_REQUEST', 'an incoming VM has no disks to change yet');
    this.guest.holdGrants(grants);
    emit({ event: 'regranted', seq: this.seq, grants });
    return this.info();
  }

  renew(validUntil: number | null): VmInfo {
    this.guest.validUntil = validUntil ?? Infinity;
    return this.info();
  }

  pause(): VmInfo {
    if (this.state === 'running') emit({ event: 'paused', seq: this.seq });
    if (this.state !== 'incoming') this.state = 'paused';
    return this.info();
  }

  /**
   * Switchover: connect to the incoming VM while still running (QEMU's migration connection exists
   * and pre-copies before the pause), pause, hand the state over, stay paused if it arrived; run on
   * if it did not.
   */
  async send(to: string, delayMs: number, fail: boolean): Promise<VmInfo> {
    const before = this.state;
    let stream: Socket | undefined;
    try {
      stream = await openStream(to);
      this.pause();
      if (delayMs > 0) await slowTransfer(stream, to, delayMs);
      if (fail) throw new BatonError('IO_ERROR', 'migration stream failed (injected)');
      await transfer(stream, to, { seq: this.seq });
      emit({ event: 'sent', seq: this.seq, to });
      return this.info();
    } catch (err) {
      // A failed migration leaves the source as it was (QEMU resumes the source).
      stream?.destroy();
      this.state = before;
      emit({ event: 'send-failed', seq: this.seq, message: (err as Error).message });
      throw asBatonError(err, 'IO_ERROR');
    }
  }

  /** A repeated send (a re-issued perform) is taken again, until the VM runs: then it is refused. */
  received(seq: number): boolean {
    if (this.state === 'running') return false;
    this.guest.seq = seq;
    this.state = 'paused';
    emit({ event: 'received', seq });
    return true;
  }

  write(): void {
    // A disk that refused the token: this copy is stale, it stops.
    if (this.state === 'running' && this.guest.write() === 'refused') this.state = 'paused';
  }
}

/** The migration stream to the incoming VM, connected; a destination that is not there is IO_ERROR. */
function openStream(to: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connect(to);
    socket.once('error', (err) => reject(new BatonError('IO_ERROR', `migration stream to ${to}: ${err.message}`, { cause: err })));
    socket.once('connect', () => resolve(socket));
  });
}

/**
 * A transfer that takes `ms` (injected), broken as soon as the incoming VM goes away (destroyed by
 * an abort's discard): QEMU's migration fails the moment its stream closes, and the source runs on.
 * The incoming VM sends nothing before the state arrives, so reading meanwhile loses nothing.
 */
function slowTransfer(socket: Socket, to: string, ms: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const over = (): void => {
      // Left flowing: transfer's reader takes the ack (a paused stream would not resume for it).
      socket.off('end', broken).off('close', broken).off('error', broken);
      resolve();
    };
    const timer = setTimeout(over, ms);
    function broken(): void {
      clearTimeout(timer);
      reject(new BatonError('IO_ERROR', `migration stream to ${to} closed by the destination`));
    }
    socket.once('end', broken).once('close', broken).once('error', broken).resume();
  });
}

/** The state over the stream, until the incoming VM acknowledges it. */
function transfer(socket: Socket, to: string, state: { seq: number }): Promise<void> {
  return new Promise((resolve, reject) => {
    socket.on('error', (err) => reject(new BatonError('IO_ERROR', `migration stream to ${to}: ${err.message}`, { cause: err })));
    socket.on('data', () => {
      socket.destroy();
      resolve();
    });
    socket.on('close', () => reject(new BatonError('IO_ERROR', `migration stream to ${to} closed without an ack`)));
    socket.write(JSON.stringify(state) + '\n');
  });
}

/** The incoming side: takes the state until the VM runs (a send may be repeated). */
function listenIncoming(path: string, vm: ManagedVm): void {
  rmSync(path, { force: true });
  const server = createServer((socket) => {
    const reader = new LineReader(64 * 1024);
    socket.on('error', () => socket.destroy());
    socket.on('data', (chunk: Buffer) => {
      for (const ev of reader.push(chunk)) {
        if (ev.kind !== 'line') continue;
        // No ack for a VM that already runs: the sender's send fails.
        if (vm.received(Number((JSON.parse(ev.line) as { seq: number }).seq))) socket.end('ack\n');
        else socket.destroy();
      }
    });
  });
  server.listen(path);
}

/**
 * A real hypervisor's code is compiled ahead of time; a node process runs each path cold the first
 * time, and the first parse of a control request's schema costs milliseconds (measured here: a
 * fresh VM's first `resume` took 3.1–3.8 ms, 1.0–1.4 ms once its schema had been used). Those
 * milliseconds would land inside a migration's switchover, so each schema a switchover uses is
 * parsed once at start.
 */
function warmUp(): void {
  ResumeSchema.parse({ grants: [{ lockspace: 'warm-up', resource: '/warm-up', mode: 'exclusive', token: 1, lockPath: '/warm-up', since: '' }], validUntil: null });
  SendSchema.parse({ to: '/warm-up' });
}

async function main(): Promise<void> {
  if (!values.dir || !values.uuid || !values.name) throw new BatonError('INVALID_REQUEST', 'a managed sim VM needs --dir, --uuid and --name');
  const vm = new ManagedVm(values.incoming);
  if (values.incoming) listenIncoming(join(values.dir, INCOMING_SOCKET), vm);
  setInterval(() => vm.write(), Number(values['interval-ms']));
  // The sim's own hygiene (no real hypervisor does this): a VM whose directory was removed has no
  // driver left that could ever reach it, so it goes instead of running on unseen.
  const dir = values.dir;
  setInterval(() => {
    if (!existsSync(dir)) process.exit(0);
  }, 1_000);
  await serveControl(join(values.dir, CONTROL_SOCKET), async (req) => {
    switch (req.op) {
      case 'status':
        return vm.info();
      case 'resume': {
        const p = ResumeSchema.parse(req);
        return vm.resume(p.grants, p.validUntil);
      }
      case 'regrant':
        return vm.regrant(ResumeSchema.pick({ grants: true }).parse(req).grants);
      case 'renew': {
        return vm.renew(ResumeSchema.pick({ validUntil: true }).parse(req).validUntil);
      }
      case 'pause':
        return vm.pause();
      case 'send': {
        const p = SendSchema.parse(req);
        const injectedFail = faults.failSends > 0;
        if (injectedFail) faults.failSends--;
        return vm.send(p.to, p.delayMs || faults.sendDelayMs, p.fail || injectedFail);
      }
      case 'inject': {
        const { op: _op, ...injected } = FaultsSchema.parse(req);
        Object.assign(faults, injected);
        return vm.info();
      }
      case 'destroy':
        emit({ event: 'destroyed', seq: vm.seq });
        setImmediate(() => process.exit(0));
        return vm.info();
      default:
        throw new BatonError('UNKNOWN_METHOD', `unknown VM control op ${String(req.op)}`);
    }
  });
  warmUp();
  emit({ event: 'created', state: vm.state, pid: process.pid });
}

main().catch((err: unknown) => {
  const e = asBatonError(err);
  emit({ event: 'error', message: e.message, code: e.code });
  process.exit(1);
});

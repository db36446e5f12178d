// A bench server process (the echo floor, the relay floor) started through the harness's
// ManagedProcess (own process group, dies with the bench): ready once it prints "ready".
import { fileURLToPath } from 'node:url';
import { ManagedProcess, waitFor } from '../support/index.js';

/** Start `node <entry>.js <args>` from test/dist/bench/ and wait until it is listening. */
export async function startLineServer(name: string, entry: string, args: string[]): Promise<ManagedProcess> {
  const script = fileURLToPath(new URL(`./${entry}.js`, import.meta.url));
  const proc = await ManagedProcess.spawn({ name, command: process.execPath, args: [script, ...args] });
  await waitFor(
    () => {
      if (!proc.running) throw new Error(`${name} exited: ${proc.output()}`);
      return proc.output().includes('ready');
    },
    { what: name, deadlineMs: 10_000, intervalMs: 5 },
  );
  return proc;
}

import { dirname, join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { asBatonError, type BatonError } from '@baton/core';
import { SIM_VM_ENTRY } from '@baton/agent';

interface FencedDiskLike {
  write(token: number, line: string): void;
  close(): void;
}

/**
 * The sim VMs' own storage path (FencedDisk: the disk's FenceGuard on its `<disk>.fence` sidecar,
 * check and append under one record lock), loaded from the built sim VM's directory: @baton/agent
 * does not export FencedDisk, and a stale writer must go through exactly the code the VMs use.
 */
async function loadFencedDisk(): Promise<new (path: string, ofd: boolean) => FencedDiskLike> {
  const mod = (await import(pathToFileURL(join(dirname(SIM_VM_ENTRY), 'fenced-disk.js')).href)) as { FencedDisk: new (path: string, ofd: boolean) => FencedDiskLike };
  return mod.FencedDisk;
}

/**
 * A deliberately stale writer: one write to `disk` with `token`, as a VM that missed its lease loss
 * would make it. Resolves with the refusal, or undefined if the storage accepted the write.
 */
export async function staleWrite(disk: string, token: number, line: string): Promise<BatonError | undefined> {
  const FencedDisk = await loadFencedDisk();
  const d = new FencedDisk(disk, true);
  try {
    d.write(token, line);
    return undefined;
  } catch (err) {
    return asBatonError(err);
  } finally {
    d.close();
  }
}

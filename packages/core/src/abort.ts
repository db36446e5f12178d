/**
 * Settles with `promise`, or rejects with the signal's reason as soon as it aborts (already
 * aborted included), for waits whose work does not take a signal itself. `promise` is always
 * observed: abandoned on an abort, its later rejection is no unhandled rejection.
 */
export function raceAbort<T>(promise: Promise<T>, signal: AbortSignal): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const abort = (): void => reject(signal.reason as Error);
    if (signal.aborted) abort();
    else signal.addEventListener('abort', abort, { once: true });
    promise.then(resolve, reject).finally(() => signal.removeEventListener('abort', abort));
  });
}

/**
 * Exponential backoff with jitter: 100 ms doubling up to 5 s. Jitter keeps many runners that
 * failed together (Postgres restart) from retrying in lock-step.
 */
export function backoffMs(attempt: number, minMs = 100, maxMs = 5_000): number {
  const base = Math.min(maxMs, minMs * 2 ** Math.min(attempt, 16))
  return Math.round(base / 2 + (Math.random() * base) / 2)
}

/** Sleeps `ms`, or less when `signal` aborts first. Never rejects. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve()
    const timer = setTimeout(done, ms)
    function done() {
      clearTimeout(timer)
      signal?.removeEventListener('abort', done)
      resolve()
    }
    signal?.addEventListener('abort', done, { once: true })
  })
}

/**
 * Runs `task` every `intervalMs` (after waiting first) until stopped; a round that throws is
 * passed to `onError` and the next round runs as usual. `stop` waits for a running round.
 */
export function every(intervalMs: number, task: (signal: AbortSignal) => Promise<void>, onError: (err: unknown) => void): { stop: () => Promise<void> } {
  const abort = new AbortController()
  const loop = (async () => {
    while (!abort.signal.aborted) {
      await sleep(intervalMs, abort.signal)
      if (abort.signal.aborted) break
      await task(abort.signal).catch(onError)
    }
  })()
  return {
    stop: async () => {
      abort.abort()
      await loop
    },
  }
}

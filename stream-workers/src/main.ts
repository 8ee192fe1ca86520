// The stream-worker process (`npm run workers`): see process.ts. Stop signals are trapped before
// anything else loads, so a SIGTERM at any moment of the start still stops it cleanly.
import { trapStopSignals } from '../../core/stop-signals'

const signals = trapStopSignals()
try {
  const { runWorkers } = await import('./process')
  await runWorkers(signals)
} catch (err) {
  process.stderr.write(`fanfare stream-workers: failed to start: ${(err as Error)?.stack ?? String(err)}\n`)
  process.exit(1)
}

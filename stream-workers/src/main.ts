// The stream-worker process (`npm run workers`): see process.ts. Stop signals are trapped before
// anything else loads, so a SIGTERM at any moment of the start still stops it cleanly.
import { trapStopSignals } from '../../core/stop-signals'

const signals = trapStopSignals()
try {
  const { runWorkers } = await import('./process')
  await runWorkers(signals)
} catch (err) {
  // Loaded here, not above: nothing but the signal trap loads before it (see the top).
  const { startFailure } = await import('../../core/start-failure')
  process.stderr.write(`fanfare stream-workers: failed to start: ${startFailure(err)}\n`)
  process.exit(1)
}

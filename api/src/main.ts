// `bun api/src/main.ts` (`npm run api`): see process.ts. Stop signals are trapped before anything
// else loads, so a SIGTERM at any moment of the start still stops the node cleanly.
import { trapStopSignals } from '../../core/stop-signals'

const signals = trapStopSignals()
try {
  const { runApi } = await import('./process')
  await runApi(signals)
} catch (err) {
  // Loaded here, not above: nothing but the signal trap loads before it (see the top).
  const { startFailure } = await import('../../core/start-failure')
  process.stderr.write(`fanfare api: failed to start: ${startFailure(err)}\n`)
  process.exit(1)
}

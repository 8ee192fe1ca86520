import { expect, test } from 'bun:test'
import { countErrorPulls, unknownKeys } from '../testing/error-pulls'
import { checkData } from '.'

test('checkData reports at most 10 problems and pulls no more errors than that (100k unknown keys)', async () => {
  const data = { board: 'main', player: 'p', score: 1, ...unknownKeys(100_000) }
  const { value: problems, pulled } = await countErrorPulls(() => checkData('score.submitted', data))
  expect(problems).toHaveLength(10)
  expect(problems[0]).toEqual({ path: expect.stringMatching(/^\/data\//), message: expect.any(String) })
  expect(pulled).toBeLessThanOrEqual(10)
})

test('poll.opened with closesAt validates in a process that never loaded Elysia (the workers): the contract needs no format registry', async () => {
  // Elysia registers TypeBox's `date-time` format on import; a stream worker does not load it, so a
  // contract relying on that format would dead-letter every such event there. A fresh process shows it.
  const script = `
    const { checkData } = await import(${JSON.stringify(`${import.meta.dir}/index.ts`)})
    const data = { stream: 'tv', poll: 'p1', question: 'Which?', options: ['a', 'b'], closesAt: '2030-01-02T03:04:05.678Z' }
    console.log(JSON.stringify([checkData('poll.opened', data), checkData('poll.opened', { ...data, closesAt: 'tomorrow' }).length]))`
  const proc = Bun.spawn([process.execPath, '-e', script], { stdout: 'pipe', stderr: 'pipe' })
  const out = await new Response(proc.stdout).text()
  expect(await proc.exited).toBe(0)
  expect(JSON.parse(out)).toEqual([[], 1])
})

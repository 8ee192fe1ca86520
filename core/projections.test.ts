import { expect, test } from 'bun:test'
import { subjects } from './events'
import { claimOf, projectionAreas, projectionNames } from './projections'

// claimOf must say exactly what the runners' filters (`<prefix>.ev.<partition>.<area>.>`) take:
// a subject it calls unclaimed and a filter takes would be dead-lettered and applied; the reverse, lost.
test('claimOf takes what a projection filter takes, and nothing else', () => {
  for (const projection of projectionNames) {
    for (const partition of [0, 7, 1023]) {
      const filter = subjects.projectionFilter('p', partition, projectionAreas[projection])
      expect(filter).toBe(`p.ev.${partition}.${projectionAreas[projection]}.>`)
      expect(claimOf(`p.ev.${partition}.${projectionAreas[projection]}.x`, 1024)).toEqual({ projection, partition })
      expect(claimOf(`p.ev.${partition}.${projectionAreas[projection]}.x.y.z`, 1024)).toEqual({ projection, partition })
    }
  }
  for (const subject of [
    'p.ev.oops',
    'p.ev.0.score', // `>` needs one more token
    'p.ev.0.bogus.thing',
    'p.ev.8.score.submitted', // 8 partitions: 0-7
    'p.ev.01.score.submitted', // no filter writes `01`
    'p.ev.00.score.submitted',
    'p.ev.-1.score.submitted',
    'p.ev.x.score.submitted',
    'p.ev.1e1.score.submitted',
    'p.ev.0.Score.submitted',
  ]) {
    expect([subject, claimOf(subject, 8)]).toEqual([subject, undefined])
  }
})

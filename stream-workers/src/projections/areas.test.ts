import { expect, test } from 'bun:test'
import { projectionNames } from '../../../core/projections'
import { projections } from '.'

// API nodes list the projections by core's names (admin status, the retention watch): the workers
// must run exactly those.
test("the workers run every projection core names, and no other", () => {
  expect(projections.map((p) => p.name).sort()).toEqual([...projectionNames].sort())
})

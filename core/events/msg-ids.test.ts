import { describe, expect, test } from 'bun:test'
import { TypeCompiler } from '@sinclair/typebox/compiler'
import { EventId, PrincipalId } from './fields'
import { siteMsgIdOf } from './index'

const idChecker = TypeCompiler.Compile(EventId)
const byChecker = TypeCompiler.Compile(PrincipalId)

/** Every string of 1..`max` characters of `alphabet`. */
const strings = (alphabet: string[], max: number): string[] => {
  const out: string[] = []
  let level = ['']
  for (let n = 1; n <= max; n++) {
    level = level.flatMap((s) => alphabet.map((c) => s + c))
    out.push(...level)
  }
  return out
}

describe('siteMsgIdOf', () => {
  test("a hub event whose id ends in '@<edge>' and the same caller's event at that edge get two msg ids", () => {
    expect(siteMsgIdOf({ by: 'ingest', id: 'm1@edge-1' }, undefined)).not.toBe(siteMsgIdOf({ by: 'ingest', id: 'm1' }, 'edge-1'))
    // Ids without '@' keep the msg id they always had, at the hub and at an edge.
    expect(siteMsgIdOf({ by: 'u:ann', id: 'm1' }, undefined)).toBe('u:ann/m1')
    expect(siteMsgIdOf({ by: 'u:ann', id: 'm1' }, 'edge-1')).toBe('u:ann/m1@edge-1')
  })

  test('two different (publisher, id, site) never share a msg id: every short id over the characters that matter', () => {
    // Ids of up to 4 of 'a', 'b', '@', '.', publishers holding '/' and '@', the hub and domains
    // that are prefixes of each other: the near misses (an id ending in '@<domain>') are all in.
    const ids = strings(['a', 'b', '@', '.'], 4).filter((s) => idChecker.Check(s))
    const bys = ['ingest', 'k:a', 'u:a', 'u:a/b', 'u:a@b', 'u:a/b@a', 'u:a/a@b'].filter((s) => byChecker.Check(s))
    const sites = [undefined, 'a', 'b', 'a-b']
    const seen = new Map<string, string>()
    const clashes: string[] = []
    for (const by of bys) {
      for (const id of ids) {
        for (const site of sites) {
          const msgId = siteMsgIdOf({ by, id }, site)
          const who = JSON.stringify([by, id, site ?? 'hub'])
          const other = seen.get(msgId)
          if (other) clashes.push(`${other} and ${who}: ${msgId}`)
          seen.set(msgId, who)
        }
      }
    }
    expect(seen.size).toBe(bys.length * ids.length * sites.length)
    expect(clashes.slice(0, 5)).toEqual([])
  })
})

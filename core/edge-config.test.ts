import { expect, test } from 'bun:test'
import { loadConfig } from './config'
import { siteOf } from './nats'

test('a node is at the hub unless FANFARE_EDGE_DOMAIN is set; the hub sources the listed edges', () => {
  expect(siteOf(loadConfig({}))).toEqual({ kind: 'hub' })
  expect(siteOf(loadConfig({ FANFARE_EDGE_DOMAINS: 'edge-eu, edge-us' }))).toEqual({ kind: 'hub', edges: ['edge-eu', 'edge-us'] })
  expect(siteOf(loadConfig({ FANFARE_EDGE_DOMAIN: 'edge-eu' }))).toEqual({ kind: 'edge', domain: 'edge-eu', hubDomain: 'hub' })
  expect(siteOf(loadConfig({ FANFARE_EDGE_DOMAIN: 'edge-eu', FANFARE_HUB_DOMAIN: 'core' }))).toEqual({ kind: 'edge', domain: 'edge-eu', hubDomain: 'core' })
})

test('edge settings that cannot work are refused, naming the variable', () => {
  expect(() => loadConfig({ FANFARE_EDGE_DOMAIN: 'edge.eu' })).toThrow(/FANFARE_EDGE_DOMAIN/)
  expect(() => loadConfig({ FANFARE_EDGE_DOMAINS: 'edge-eu,edge eu' })).toThrow(/FANFARE_EDGE_DOMAINS: "edge eu" is not a JetStream domain/)
  expect(() => loadConfig({ FANFARE_EDGE_DOMAINS: 'a,a' })).toThrow(/listed twice/)
  expect(() => loadConfig({ FANFARE_EDGE_DOMAIN: 'a', FANFARE_EDGE_DOMAINS: 'b' })).toThrow(/either at an edge site or at the hub/)
  expect(() => loadConfig({ FANFARE_EDGE_DOMAIN: 'hub' })).toThrow(/a JetStream domain of its own/)
  expect(() => loadConfig({ DATABASE_READ_URL: 'mysql://x' })).toThrow(/DATABASE_READ_URL/)
})

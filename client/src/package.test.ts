import { expect, test } from 'bun:test'
import { readdirSync, readFileSync, mkdtempSync, writeFileSync, rmSync } from 'node:fs'
import { join } from 'node:path'
import { tmpdir } from 'node:os'
import { wsUrl } from './client'

const SRC = import.meta.dir

/** The SDK's own modules (tests aside). */
const modules = () =>
  readdirSync(SRC, { recursive: true, encoding: 'utf8' })
    .filter((f) => f.endsWith('.ts') && !f.endsWith('.test.ts'))
    .map((f) => ({ file: f, text: readFileSync(join(SRC, f), 'utf8') }))

test('dependency-free: the SDK imports only its own modules, and the server contracts as types only', () => {
  const problems: string[] = []
  for (const { file, text } of modules()) {
    for (const m of text.matchAll(/^\s*(import|export)\s+(type\s+)?[^'"]*?from\s+'([^']+)'/gm)) {
      const [, , typeOnly, from] = m
      const own = from.startsWith('./') || (from.startsWith('../') && !from.startsWith('../../'))
      if (!own && !typeOnly) problems.push(`${file}: ${m[0].trim()}`)
    }
  }
  expect(problems).toEqual([])
})

test('bundled, it is plain JavaScript with no imports, and runs on Node with the standard WebSocket', async () => {
  const out = mkdtempSync(join(tmpdir(), 'fanfare-client-'))
  try {
    const built = await Bun.build({ entrypoints: [join(SRC, 'index.ts')], outdir: out, target: 'browser', format: 'esm' })
    expect(built.success).toBe(true)
    const bundle = readFileSync(join(out, 'index.js'), 'utf8')
    expect(bundle).not.toMatch(/^\s*import\s/m)
    expect(bundle.length).toBeLessThan(60_000)

    // A server that sends a snapshot and an update, and acks a publish.
    const server = Bun.serve({
      port: 0,
      hostname: '127.0.0.1',
      fetch: (req, srv) => (srv.upgrade(req, { data: undefined }) ? undefined : new Response('no', { status: 400 })),
      websocket: {
        message(ws, text) {
          const f = JSON.parse(String(text))
          if (f.op === 'auth') ws.send(JSON.stringify({ op: 'authed', ref: f.ref, principal: 'u:ann', dedupWindowMs: 120000 }))
          if (f.op === 'subscribe') {
            ws.send(JSON.stringify({ op: 'snapshot', channel: f.channel, version: 1, epoch: 'e', data: { stream: 's', totals: { a: 1 } } }))
            ws.send(JSON.stringify({ op: 'update', channel: f.channel, version: 2, epoch: 'e', data: { counts: { a: 2 }, totals: { a: 3 } } }))
          }
          if (f.op === 'publish') ws.send(JSON.stringify({ op: 'ack', ref: f.ref, id: f.event.id, seq: 7, duplicate: false }))
        },
      },
    })
    try {
      const script = join(out, 'run.mjs')
      writeFileSync(
        script,
        `import { createClient } from './index.js'
const client = createClient({ urls: ['http://127.0.0.1:${server.port}'], token: async () => 'token' })
const sub = client.subscribe('reactions:s')
const ack = await client.publish({ type: 'reaction.sent', data: { stream: 's', emoji: 'x' } })
while (sub.version < 2) await new Promise((r) => setTimeout(r, 10))
console.log(JSON.stringify({ ack, state: sub.state }))
client.close()
`,
      )
      // Node 22 has WebSocket as a global; Node 20 behind a flag (this machine's Node).
      const major = Number(Bun.spawnSync(['node', '--version']).stdout.toString().slice(1).split('.')[0])
      const node = Bun.spawn(['node', ...(major < 22 ? ['--experimental-websocket'] : []), script], { stdout: 'pipe', stderr: 'pipe' })
      const [stdout, stderr, code] = await Promise.all([new Response(node.stdout).text(), new Response(node.stderr).text(), node.exited])
      expect({ code, stderr: stderr.split('\n').filter((l) => !l.includes('ExperimentalWarning') && !l.includes('--trace-warnings') && l.trim()) }).toEqual({ code: 0, stderr: [] })
      const result = JSON.parse(stdout)
      expect(result.ack).toMatchObject({ seq: 7, duplicate: false })
      expect(result.state).toEqual({ stream: 's', totals: { a: 3 } })
    } finally {
      server.stop(true)
    }
  } finally {
    rmSync(out, { recursive: true, force: true })
  }
})

test("the examples' URLs reach the WebSocket endpoint: ws(s) URLs are kept as written, so one without /v1/ws would never connect", () => {
  const readme = readFileSync(join(SRC, '../../README.md'), 'utf8')
  const sdk = readme.slice(readme.indexOf('## Client SDK'), readme.indexOf('### The arcade demo'))
  const examples = [readFileSync(join(SRC, 'index.ts'), 'utf8'), sdk]
  const urls = examples.flatMap((text) => [...text.matchAll(/urls: \[([^\]]*)\]/g)].flatMap((m) => [...m[1].matchAll(/'([^']+)'/g)].map((u) => u[1])))
  expect(urls.length).toBeGreaterThan(0)
  expect(urls.filter((u) => new URL(wsUrl(u)).pathname !== '/v1/ws')).toEqual([])
})

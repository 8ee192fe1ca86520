/**
 * The admin console (served at /admin/console): vanilla TypeScript over the admin REST routes and
 * the WebSocket. One credential, typed in and kept in sessionStorage for this tab; every call sends
 * it as a bearer header. The open tab's data is refreshed every POLL_MS; the events/s chart samples
 * the event stream's last sequence on every refresh, whatever tab is open.
 */

const POLL_MS = 2000
const CHART_POINTS = 60
const MAX_FRAMES = 200
const STORE = 'fanfare.console.token'
const TABS = ['overview', 'projections', 'dead-letters', 'keys', 'audit', 'inspector'] as const
type Tab = (typeof TABS)[number]

type Json = any
type Attrs = Record<string, string>

const $ = <T extends HTMLElement = HTMLElement>(id: string) => document.getElementById(id) as T
function el<K extends keyof HTMLElementTagNameMap>(tag: K, attrs: Attrs = {}, ...children: (Node | string)[]): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag)
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v)
  node.append(...children)
  return node
}
/**
 * Characters that reorder the text after them (bidi controls) or show as nothing (zero-width
 * ones), spelled out as JSON escapes wherever the console shows JSON: a payload, a key name or
 * a frame can then neither turn around what follows it nor hide what it holds. JSON.stringify
 * leaves them raw and only inside strings, where an escape means the same character.
 */
const HIDDEN = /[\u061c\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]/g
const visible = (json: string) => json.replace(HIDDEN, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`)
const rows = (table: string, trs: HTMLTableRowElement[]) => document.querySelector(`[data-testid="${table}"] tbody`)!.replaceChildren(...trs)
const td = (...children: (Node | string)[]) => el('td', {}, ...children)
const button = (label: string, onClick: () => void, attrs: Attrs = {}) => {
  const b = el('button', { type: 'button', ...attrs }, label)
  b.addEventListener('click', onClick)
  return b
}
const ago = (iso: string | null) => {
  if (!iso) return '—'
  const s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000))
  return s < 60 ? `${s}s ago` : s < 3600 ? `${Math.round(s / 60)}m ago` : new Date(iso).toLocaleString()
}

// ---- credential and calls ----

let token = sessionStorage.getItem(STORE) ?? ''

class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message)
  }
}

async function api(method: string, path: string, body?: unknown): Promise<Json> {
  let res: Response
  try {
    res = await fetch(path, {
      method,
      headers: { authorization: `Bearer ${token}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
      body: body === undefined ? undefined : JSON.stringify(body),
    })
  } catch {
    // fetch says only "Failed to fetch": the node is down, restarting, or out of the network's reach.
    throw new ApiError(0, 'unreachable', `no answer from ${location.host}: the node may be down or restarting (the console tries again every ${POLL_MS / 1000} s)`)
  }
  const json = await res.json().catch(() => null)
  if (!res.ok) throw new ApiError(res.status, json?.error?.code ?? 'error', `${json?.error?.message ?? res.statusText}${problems(json?.error?.details, json?.error?.message)}`)
  return json
}

/** The notice shows why the last refresh failed: the next refresh that succeeds takes it away. */
let refreshFailed = false

/**
 * A validation error's message may be only "invalid body" or "invalid params": its details name the
 * field and what is wrong with it (the first of each field, the first three fields), unless the
 * message says it already (`board must be 1-64 characters, ...`).
 */
function problems(details: unknown, message: unknown): string {
  if (!Array.isArray(details)) return ''
  const said = typeof message === 'string' ? message : ''
  const first = new Map<string, string>()
  for (const d of details) if (typeof d?.path === 'string' && typeof d?.message === 'string' && !first.has(d.path) && !said.includes(d.message)) first.set(d.path, d.message)
  const named = [...first].slice(0, 3).map(([path, message]) => `${path.replace(/^\//, '') || 'request'}: ${message}`)
  return named.length > 0 ? ` (${named.join('; ')})` : ''
}

function notify(text: string, bad = false) {
  refreshFailed = false
  const n = $('notice')
  n.textContent = text
  n.className = bad ? 'notice bad' : 'notice'
  n.hidden = false
}
const fail = (err: unknown) => {
  if (err instanceof ApiError && err.status === 401) return signOut('signed out: the credential is no longer accepted')
  notify(err instanceof ApiError ? `${err.code}: ${err.message}` : String(err), true)
}

// ---- sign in ----

function showSignIn(message = '') {
  $('signin').hidden = false
  $('app').hidden = true
  $('tabs').hidden = true
  $('signout').hidden = true
  $('signin-error').textContent = message
}

function signOut(message = '') {
  token = ''
  sessionStorage.removeItem(STORE)
  auditShown = []
  letterPages = 1
  inspector.close()
  showSignIn(message)
}

async function signIn(candidate: string): Promise<boolean> {
  token = candidate
  try {
    await api('GET', '/admin/nodes')
  } catch (err) {
    token = ''
    showSignIn(err instanceof ApiError ? `${err.code}: ${err.message}` : String(err))
    return false
  }
  sessionStorage.setItem(STORE, candidate)
  $('signin').hidden = true
  $('app').hidden = false
  $('tabs').hidden = false
  $('signout').hidden = false
  return true
}

// ---- tabs and refresh ----

const current = (): Tab => {
  const t = location.hash.slice(1) as Tab
  return TABS.includes(t) ? t : 'overview'
}

function showTab() {
  const tab = current()
  for (const t of TABS) $(t).classList.toggle('active', t === tab)
  document.querySelectorAll('nav a').forEach((a) => a.classList.toggle('active', a.getAttribute('data-tab') === tab))
  void refresh()
}

const loaders: Partial<Record<Tab, () => Promise<void>>> = {
  overview: loadOverview,
  projections: loadProjections,
  'dead-letters': loadDeadLetters,
  keys: loadKeys,
  audit: () => loadAudit(false),
}

let refreshing = false
async function refresh() {
  if (!token || refreshing) return
  refreshing = true
  try {
    await sampleStream()
    await loaders[current()]?.()
    if (refreshFailed) $('notice').hidden = true
    refreshFailed = false
  } catch (err) {
    fail(err)
    refreshFailed = !$('notice').hidden
  } finally {
    refreshing = false
  }
}

// ---- overview ----

/** Samples of the event stream's last sequence, for events per second. */
const samples: { at: number; seq: number }[] = []
let latestProjections: Json

async function sampleStream() {
  latestProjections = await api('GET', '/admin/projections')
  samples.push({ at: performance.now(), seq: latestProjections.stream.lastSeq })
  if (samples.length > CHART_POINTS + 1) samples.shift()
  const rates = ratesOf()
  const rate = rates.length > 0 ? rates[rates.length - 1] : 0
  $('eps').textContent = rate < 10 ? rate.toFixed(1) : String(Math.round(rate))
  // A projection's lag is null while a partition has no worker, or its worker did not answer (its events wait, uncounted): the
  // total is unknown then, as the Projections tab says, never 0 (no worker at all read as caught up).
  const lags: (number | null)[] = latestProjections.projections.map((p: Json) => p.lag)
  $('lag').textContent = lags.includes(null) ? '?' : String(lags.reduce((n: number, l) => n + l!, 0))
  drawChart(rates)
}

const ratesOf = () => samples.slice(1).map((s, i) => Math.max(0, (s.seq - samples[i].seq) / ((s.at - samples[i].at) / 1000)))

/** A hand-drawn SVG line chart of events per second. */
function drawChart(rates: number[]) {
  const svg = $('chart')
  const max = Math.max(1, ...rates)
  const x = (i: number) => (600 * (i + CHART_POINTS - rates.length)) / (CHART_POINTS - 1)
  const y = (v: number) => 110 - (100 * v) / max
  const points = rates.map((v, i) => `${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(' ')
  const ns = 'http://www.w3.org/2000/svg'
  const line = document.createElementNS(ns, 'polyline')
  line.setAttribute('class', 'line')
  line.setAttribute('points', points)
  const area = document.createElementNS(ns, 'polygon')
  area.setAttribute('class', 'area')
  if (rates.length > 0) area.setAttribute('points', `${x(0)},110 ${points} ${x(rates.length - 1)},110`)
  svg.replaceChildren(area, line)
  $('chart-max').textContent = `peak ${Math.round(max)}/s`
}

async function loadOverview() {
  const view = await api('GET', '/admin/nodes')
  $('connections').textContent = String(view.nodes.reduce((n: number, x: Json) => n + x.connections, 0))
  $('subscriptions').textContent = String(view.nodes.reduce((n: number, x: Json) => n + x.subscriptions, 0))
  rows(
    'nodes',
    view.nodes.map((n: Json) => el('tr', {}, td(n.id), td(String(n.connections)), td(String(n.subscriptions)), td(String(n.channels)), td(ago(n.startedAt)))),
  )
  rows(
    'workers',
    view.workers.map((w: Json) => el('tr', {}, td(w.id), td(w.partitions.join(', ') || '—'), td(ago(w.heartbeatAt)))),
  )
  const top = Math.max(1, ...view.busiest.map((c: Json) => c.subscribers))
  rows(
    'busiest',
    view.busiest.map((c: Json) =>
      el(
        'tr',
        {},
        td(c.channel),
        td(bar((80 * c.subscribers) / top), ` ${c.subscribers}`),
        td(button('Inspect', () => inspect(c.channel))),
      ),
    ),
  )
}

/** A bar `px` wide (through the style property: the page's policy refuses style attributes). */
function bar(px: number) {
  const b = el('span', { class: 'bar' })
  b.style.width = `${Math.round(px)}px`
  return b
}

// ---- projections ----

async function loadProjections() {
  const report = latestProjections ?? (await api('GET', '/admin/projections'))
  // One request for every projection's latest job (asking each projection got a 404 per never-rebuilt one, every refresh).
  const { jobs: latest } = await api('GET', '/admin/rebuilds').catch(() => ({ jobs: [] }))
  const jobs = report.projections.map((p: Json) => latest.find((j: Json) => j.projection === p.projection) ?? null)
  $('projection-list').replaceChildren(
    ...report.projections.map((p: Json, i: number) => {
      const job = jobs[i]
      const status = job
        ? el('span', { class: `state-${job.state}`, 'data-testid': `rebuild-${p.projection}` }, `rebuild ${job.state}${job.state === 'running' ? ` (seq ${job.appliedSeq}, ${job.pending} to go)` : ''}${job.error ? `: ${job.error}` : ''}`)
        : el('span', { 'data-testid': `rebuild-${p.projection}` }, 'never rebuilt')
      const rebuild = button('Rebuild', () => {
        if (!confirm(`Rebuild ${p.projection} from the start of the event stream?`)) return
        api('POST', `/admin/projections/${p.projection}/rebuild`)
          .then((j) => notify(`rebuild of ${p.projection} requested (job ${j.id})`))
          .then(refresh, fail)
      })
      // Events the retention deleted before they were applied: lost to this read model (README, Retention and lagging workers).
      const expired = (x: Json) =>
        x.expired
          ? el('span', { class: 'state-failed', 'data-testid': `expired-${p.projection}-${x.partition}` }, `seq ${x.expired.fromSeq}–${x.expired.toSeq} deleted unapplied (${ago(x.expired.at)})`)
          : '—'
      const table = el(
        'table',
        {},
        el(
          'thead',
          {},
          el('tr', {}, el('th', {}, 'partition'), el('th', {}, 'applied seq'), el('th', {}, 'lag'), el('th', {}, 'waiting for'), el('th', {}, 'oldest unapplied'), el('th', {}, 'lost to retention'), el('th', {}, 'consumer'), el('th', {}, 'updated')),
        ),
        el(
          'tbody',
          {},
          ...p.partitions.map((x: Json) =>
            el(
              'tr',
              {},
              td(String(x.partition)),
              td(String(x.seq)),
              // Null: no worker holds the partition, or its worker did not answer.
              td(x.lag === null ? (x.consumer === null ? 'no owner' : 'unknown') : String(x.lag)),
              // What its runner waits for, since when: a partition standing still says where (README, GET /admin/projections).
              el('td', { 'data-testid': `waiting-${p.projection}-${x.partition}` }, x.waiting ? `${x.waiting.for} · since ${ago(x.waiting.since)}` : '—'),
              td(ago(x.oldestUnappliedAt)),
              td(expired(x)),
              td(x.consumer ?? '—'),
              td(ago(x.updatedAt)),
            ),
          ),
        ),
      )
      const lost = p.partitions.filter((x: Json) => x.expired).map((x: Json) => x.partition)
      const warning = lost.length > 0 ? el('span', { class: 'state-failed' }, ` · events lost to retention in partition ${lost.join(', ')}`) : ''
      return el('div', { class: 'card', 'data-projection': p.projection }, el('h2', {}, `${p.projection} `, el('small', {}, `lag ${p.lag ?? '?'} · applied to ${p.appliedSeq} · `, status, warning, ' ')), rebuild, table)
    }),
    unclaimedCard(report.unclaimed),
  )
}

/** The catch of unclaimed subjects: not a read model, so no rebuild and no lag (README, Unclaimed subjects). */
function unclaimedCard(u: Json) {
  const state = u.fence === 0 ? 'never started' : `checkpoint seq ${u.seq} (its last dead letter) · moved ${ago(u.updatedAt)}`
  return el(
    'div',
    { class: 'card', 'data-testid': 'unclaimed' },
    el('h2', {}, 'unclaimed ', el('small', {}, 'catch of messages on subjects no projection consumes · not a read model, nothing to rebuild')),
    el('p', {}, `partition 0's worker · ${state} · `, el('span', { 'data-testid': 'unclaimed-dead-letters' }, `${u.deadLetters} dead letter${u.deadLetters === 1 ? '' : 's'} held`)),
  )
}

// ---- dead letters ----

let selectedLetter: number | undefined
/** Dead letters are listed a page (100) at a time, newest first; "Older" shows one page more. */
const LETTER_PAGE = 100
let letterPages = 1

async function loadDeadLetters() {
  // Every page shown is read again on each refresh: replays and discards change what is on them.
  const deadLetters: Json[] = []
  let more = true
  for (let page = 0; page < letterPages && more; page++) {
    const before = deadLetters.length > 0 ? `&before=${deadLetters[deadLetters.length - 1].id}` : ''
    const next = (await api('GET', `/admin/dead-letters?limit=${LETTER_PAGE}${before}`)).deadLetters
    deadLetters.push(...next)
    more = next.length === LETTER_PAGE
  }
  $('dead-letters-more').hidden = !more
  rows(
    'dead-letters',
    deadLetters.map((d: Json) => {
      const tr = el(
        'tr',
        { 'data-id': String(d.id), class: d.id === selectedLetter ? 'selected' : '' },
        td(String(d.id)),
        td(`${d.projection}/${d.partition}`),
        td(String(d.streamSeq)),
        td(d.eventId ?? '—'),
        el('td', { class: 'reason' }, d.reason),
        td(ago(d.createdAt)),
        td(
          button('Inspect', () => showLetter(d)),
          ' ',
          button('Replay', () => replay(d.id), { 'data-action': 'replay' }),
          ' ',
          button('Discard', () => discard(d.id), { class: 'danger', 'data-action': 'discard' }),
        ),
      )
      return tr
    }),
  )
  if (selectedLetter !== undefined && !deadLetters.some((d: Json) => d.id === selectedLetter)) $('letter').hidden = true
}

function showLetter(d: Json) {
  selectedLetter = d.id
  $('letter-id').textContent = `${d.id} · ${d.subject}`
  let payload = d.payload
  try {
    payload = JSON.stringify(JSON.parse(d.payload), null, 2)
  } catch {}
  $('letter-payload').textContent = visible(payload)
  $('letter').hidden = false
  // The card is below the list, out of sight once it holds more than a few letters: bring it into
  // view, and move the focus there so that the keyboard follows.
  $('letter').focus({ preventScroll: true })
  $('letter').scrollIntoView({ block: 'nearest' })
  void refresh()
}

async function replay(id: number) {
  try {
    await api('POST', `/admin/dead-letters/${id}/replay`)
    notify(`dead letter ${id} replayed: applied once, and removed`)
  } catch (err) {
    fail(err)
  }
  await refresh()
}

async function discard(id: number) {
  if (!confirm(`Discard dead letter ${id} for good?`)) return
  try {
    await api('DELETE', `/admin/dead-letters/${id}`)
    notify(`dead letter ${id} discarded`)
  } catch (err) {
    fail(err)
  }
  await refresh()
}

// ---- keys and revocations ----

async function loadKeys() {
  const [{ keys }, { entries }] = await Promise.all([api('GET', '/admin/keys'), api('GET', '/admin/audit?limit=20&action=user.revoked,token.revoked,key.revoked')])
  rows(
    'keys',
    keys.map((k: Json) =>
      el(
        'tr',
        { 'data-key': k.id },
        td(k.id),
        td(k.name),
        td(k.scopes.join(' ')),
        td(ago(k.createdAt)),
        td(ago(k.lastUsedAt)),
        td(k.revokedAt ? `revoked ${ago(k.revokedAt)}` : k.expiresAt && Date.parse(k.expiresAt) < Date.now() ? 'expired' : 'active'),
        td(k.revokedAt ? '' : button('Revoke', () => revokeKey(k.id, k.name), { class: 'danger', 'data-action': 'revoke' })),
      ),
    ),
  )
  $('revocations').replaceChildren(
    // The newest 20 revocations, however many other admin actions came after them.
    ...entries
      // Targets and actors hold ids people chose: each in its own direction (bdi).
      .map((e: Json) => el('li', {}, `${e.action} `, el('bdi', {}, e.target), ' by ', el('bdi', {}, e.actor), `, ${ago(e.at)}`)),
  )
}

async function revokeKey(id: string, name: string) {
  if (!confirm(`Revoke key ${name} (${id})? Every node refuses it at once.`)) return
  try {
    await api('DELETE', `/admin/keys/${id}`)
    notify(`key ${id} revoked`)
  } catch (err) {
    fail(err)
  }
  await refresh()
}

function onForm(id: string, handle: (data: FormData, form: HTMLFormElement) => Promise<void>) {
  const form = $<HTMLFormElement>(id)
  form.addEventListener('submit', (e) => {
    e.preventDefault()
    handle(new FormData(form), form).then(refresh, fail)
  })
}

// ---- audit ----

/**
 * The entries shown, newest first: the newest page, and the older pages asked for with "Older".
 * A refresh adds what is newer than the top and keeps the older pages shown.
 */
let auditShown: Json[] = []

async function loadAudit(older: boolean) {
  const oldest = auditShown[auditShown.length - 1]?.id
  if (older && oldest !== undefined) {
    const { entries } = await api('GET', `/admin/audit?limit=50&before=${oldest}`)
    if (entries.length === 0) notify('no older entries')
    auditShown = [...auditShown, ...entries]
  } else {
    const { entries } = await api('GET', '/admin/audit?limit=50')
    const top = auditShown[0]?.id
    // Overlapping what is shown: only the newer entries are new. Otherwise (nothing shown yet, or
    // more than a page arrived since) the newest page alone, with no gap between it and older rows.
    const overlaps = top !== undefined && entries.length > 0 && entries[entries.length - 1].id <= top
    auditShown = overlaps ? [...entries.filter((e: Json) => e.id > top), ...auditShown] : entries
  }
  rows(
    'audit',
    auditShown.map((e: Json) => el('tr', {}, td(String(e.id)), td(ago(e.at)), td(e.actor), td(e.action), td(e.target), td(el('code', {}, e.details ? visible(JSON.stringify(e.details)) : '')))),
  )
}

// ---- channel inspector ----

/** One WebSocket for the inspector, signed in with the console's credential by an `auth` frame (not the URL). */
const inspector = (() => {
  let ws: WebSocket | undefined
  let channel: string | undefined
  const state = (s: string) => {
    const pill = $('ws-state')
    pill.textContent = s
    pill.className = s === 'open' ? 'pill open' : 'pill'
  }
  const show = (text: string) => {
    const list = $('frames')
    let op = ''
    try {
      op = JSON.parse(text).op ?? ''
    } catch {}
    list.prepend(el('li', { 'data-op': op }, el('b', {}, new Date().toLocaleTimeString()), visible(text)))
    while (list.children.length > MAX_FRAMES) list.lastElementChild!.remove()
  }
  const open = () =>
    new Promise<WebSocket>((resolve, reject) => {
      if (ws && ws.readyState === WebSocket.OPEN) return resolve(ws)
      const url = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/v1/ws`
      const socket = new WebSocket(url)
      ws = socket
      state('connecting')
      socket.onopen = () => socket.send(JSON.stringify({ op: 'auth', ref: 'console', token }))
      socket.onmessage = (e) => {
        const text = String(e.data)
        const frame = JSON.parse(text)
        if (frame.op === 'authed' && frame.ref === 'console') {
          state('open')
          return resolve(socket)
        }
        if (frame.op === 'pong') return
        show(text)
      }
      socket.onclose = (e) => {
        state(`closed ${e.code}`)
        if (ws === socket) ws = undefined
        reject(new Error(`WebSocket closed (${e.code} ${e.reason})`))
      }
    })
  return {
    async subscribe(next: string) {
      const socket = await open()
      if (channel) socket.send(JSON.stringify({ op: 'unsubscribe', channel }))
      channel = next
      $('frames').replaceChildren()
      $('inspect-current').textContent = next
      socket.send(JSON.stringify({ op: 'subscribe', ref: 'inspect', channel: next }))
    },
    unsubscribe() {
      if (channel && ws?.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ op: 'unsubscribe', channel }))
      channel = undefined
      $('inspect-current').textContent = ''
    },
    close() {
      ws?.close(1000, 'signed out')
      ws = undefined
      channel = undefined
    },
  }
})()

function inspect(channel: string) {
  $<HTMLInputElement>('inspect').querySelector<HTMLInputElement>('input[name="channel"]')!.value = channel
  location.hash = '#inspector'
  inspector.subscribe(channel).catch(fail)
}

// ---- wiring ----

$('signin').addEventListener('submit', (e) => {
  e.preventDefault()
  const value = String(new FormData(e.target as HTMLFormElement).get('token') ?? '').trim()
  ;($('signin') as HTMLFormElement).reset()
  void signIn(value).then((ok) => ok && showTab())
})
$('signout').addEventListener('click', () => signOut())
window.addEventListener('hashchange', showTab)
$('audit-more').addEventListener('click', () => void loadAudit(true).catch(fail))
$('dead-letters-more').addEventListener('click', () => {
  letterPages++
  void refresh()
})
$('inspect-stop').addEventListener('click', () => inspector.unsubscribe())

onForm('inspect', async (data) => inspector.subscribe(String(data.get('channel')).trim()))
onForm('create-key', async (data, form) => {
  const scopes = String(data.get('scopes'))
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean)
  const key = await api('POST', '/admin/keys', { name: String(data.get('name')).trim(), scopes })
  const box = $('new-key')
  box.replaceChildren(el('b', {}, `${key.name} (${key.id}): `), el('code', { 'data-testid': 'new-key-secret' }, key.key), el('br'), 'Copy it now: it is shown this once.')
  box.hidden = false
  form.reset()
})
onForm('revoke-user', async (data, form) => {
  const user = String(data.get('user')).trim()
  // In the body: a user id `.` or `..` cannot be a path segment (the browser would resolve it away).
  await api('POST', '/admin/users/revoke', { user })
  notify(`tokens of ${user} issued until now are revoked`)
  form.reset()
})
onForm('revoke-token', async (data, form) => {
  // With the token's sub, only that user's token with the jti is refused (an auth service may reuse jtis).
  const user = String(data.get('user') ?? '').trim()
  await api('POST', '/admin/tokens/revoke', { jti: String(data.get('jti')).trim(), exp: Number(data.get('exp')), ...(user ? { user } : {}) })
  notify('token revoked')
  form.reset()
})

setInterval(() => void refresh(), POLL_MS)
if (token) void signIn(token).then((ok) => ok && showTab())
else showSignIn()

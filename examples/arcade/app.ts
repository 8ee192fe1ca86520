/**
 * The arcade: a small page on @fanfare/client. A live leaderboard, a chat room, reactions on a
 * stage with its viewer count, a match lobby whose rounds score on the board. Every panel is one `subscribe`: the SDK keeps each state exact
 * (resuming after any reconnect), so rendering is a function of `state` and nothing else.
 */
import { createClient, type Client, type StateOf } from '../../client/src'

const BOARD = 'arena'
const ROOM = 'lobby'
const STAGE = 'main-stage'
const EMOJIS = ['👏', '🔥', '❤️', '😂']
const MODE = 'arcade'

const $ = <T extends HTMLElement = HTMLElement>(id: string) => document.getElementById(id) as T
const el = (tag: string, props: Record<string, string> = {}, ...children: (Node | string)[]) => {
  const node = document.createElement(tag)
  for (const [k, v] of Object.entries(props)) node.setAttribute(k, v)
  node.append(...children)
  return node
}

type Session = { token: string; user: string; name: string }

/** The demo's stand-in for a game's own sign-in: a user token for a name (only while FANFARE_DEMO is on). */
async function signIn(name: string): Promise<Session> {
  const res = await fetch('/demo/session', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name }) })
  if (!res.ok) throw new Error(`sign-in failed: ${res.status} ${await res.text()}`)
  return res.json()
}

/** The name from `#name=...`, or from the sign-in form. */
function askName(): Promise<string> {
  const fromHash = new URLSearchParams(location.hash.slice(1)).get('name')
  if (fromHash) return Promise.resolve(fromHash)
  const form = $<HTMLFormElement>('signin')
  form.hidden = false
  return new Promise((resolve) =>
    form.addEventListener('submit', (e) => {
      e.preventDefault()
      form.hidden = true
      resolve(String(new FormData(form).get('name')))
    }),
  )
}

function renderBoard(board: StateOf<'leaderboard:x'>) {
  $('board').replaceChildren(
    ...board.entries.slice(0, 10).map((e) => el('li', { 'data-player': e.player }, el('span', { class: 'rank' }, String(e.rank)), el('span', {}, e.player), el('span', { class: 'score' }, String(e.score)))),
  )
}

function renderChat(room: StateOf<'chat:x'>) {
  // Newest first, as the room keeps them; the list is laid out bottom-up.
  $('messages').replaceChildren(...room.messages.map((m) => el('li', { 'data-id': m.id }, el('b', {}, m.name ?? m.user), m.text)))
}

function renderTotals(reactions: StateOf<'reactions:x'>) {
  $('totals').textContent = Object.entries(reactions.totals)
    .map(([emoji, n]) => `${emoji} ${n}`)
    .join('   ')
}

/** Plays a window's reactions: a few floating emojis per kind, however many arrived. */
function float(counts: Record<string, number>) {
  const stage = $('stage')
  for (const [emoji, n] of Object.entries(counts)) {
    for (let i = 0; i < Math.min(n, 5); i++) {
      const node = el('span', { class: 'float', style: `left:${5 + Math.random() * 85}%;animation-delay:${i * 120}ms` }, emoji)
      stage.append(node)
      setTimeout(() => node.remove(), 2000 + i * 120)
    }
  }
}

function start(client: Client, session: Session) {
  client.on('status', (s) => {
    const pill = $('status')
    pill.className = `status ${s.state}`
    pill.textContent = s.state === 'reconnecting' ? `reconnecting (${s.reason.code || s.reason.message})` : s.state
  })
  client.subscribe(`leaderboard:${BOARD}`, { onState: renderBoard })
  client.subscribe(`chat:${ROOM}`, { onState: renderChat })
  client.subscribe(`reactions:${STAGE}`, { onState: renderTotals, onUpdate: (u) => float(u.counts) })
  // Watching the stage counts this page as a viewer; its presence channel says how many watch.
  client.subscribe(`stream:${STAGE}`)
  client.subscribe(`presence:stream:${STAGE}`, {
    onState: (p) => ($('viewers').textContent = `${p.connections} watching`),
  })

  $('reaction-buttons').replaceChildren(
    ...EMOJIS.map((emoji) => {
      const b = el('button', { type: 'button', 'data-emoji': emoji, title: `react ${emoji}` }, emoji)
      b.addEventListener('click', () => void client.publish({ type: 'reaction.sent', data: { stream: STAGE, emoji } }).catch(showError))
      return b
    }),
  )
  const say = $<HTMLFormElement>('say')
  say.addEventListener('submit', (e) => {
    e.preventDefault()
    const input = say.elements.namedItem('text') as HTMLInputElement
    const text = input.value.trim()
    if (!text) return
    input.value = ''
    // The SDK gives the message an id once and resends it until stored: a flaky network never
    // posts it twice.
    client.publish({ type: 'chat.message.posted', data: { room: ROOM, user: session.user, name: session.name, text } }).catch(showError)
  })
}

type MatchState = NonNullable<StateOf<'match:x'>>

/** The newest open arcade match, or a new one (the demo's stand-in for a game server opens it). */
async function openMatch(token: string): Promise<string> {
  const res = await fetch(`/v1/matches?status=open&mode=${MODE}&limit=100`, { headers: { authorization: `Bearer ${token}` } })
  if (!res.ok) throw new Error(`listing matches failed: ${res.status}`)
  const { matches } = (await res.json()) as { matches: { match: string }[] }
  if (matches.length > 0) return matches[matches.length - 1].match
  const created = await fetch('/demo/matches', { method: 'POST' })
  if (!created.ok) throw new Error(`opening a match failed: ${created.status}`)
  return ((await created.json()) as { match: string }).match
}

function renderMatch(m: MatchState | null, me: string) {
  const seated = m?.players.find((p) => p.player === me)
  const live = m !== null && (m.status === 'open' || m.status === 'full')
  const seats = m
    ? [
        ...m.players.map((p) =>
          el(
            'li',
            { 'data-player': p.player },
            el('span', {}, p.player),
            el('span', { class: p.ready ? 'ready' : '' }, p.ready ? 'ready' : ''),
            el('span', { class: p.connected ? '' : 'away' }, p.connected ? '' : 'away'),
          ),
        ),
        ...Array.from({ length: m.maxPlayers - m.players.length }, () => el('li', { class: 'empty' }, 'open seat')),
      ]
    : []
  $('seats').replaceChildren(...seats)
  // Each player in <bdi>: an id's own direction marks stay inside it, off the scores after it.
  $('match-status').replaceChildren(
    ...(!m
      ? ['opening…']
      : m.results
        ? [`${m.status}: `, ...m.results.flatMap((r, i) => [`${i > 0 ? ', ' : ''}${r.rank}. `, el('bdi', {}, r.player), ` ${r.score}`])]
        : [`${m.status}, ${m.players.length}/${m.maxPlayers} seated`]),
  )
  $<HTMLButtonElement>('join').disabled = !live || seated !== undefined || m?.status !== 'open'
  $<HTMLButtonElement>('ready').disabled = !live || !seated || seated.ready
  $<HTMLButtonElement>('leave').disabled = !live || !seated
  $<HTMLButtonElement>('play').disabled = !live || m.players.length === 0
  $('next-match').hidden = live || m === null
}

/**
 * The lobby: one match channel at a time. Seats, ready flags and who is away come from the match's
 * state; the decision on this player's own join comes on their private `user:` channel.
 */
function lobby(client: Client, session: Session) {
  let current: { match: string; unsubscribe(): void } | undefined
  const show = async () => {
    current?.unsubscribe()
    const match = await openMatch(session.token)
    $('match-name').textContent = match
    renderMatch(null, session.user)
    const sub = client.subscribe(`match:${match}`, { onState: (m) => renderMatch(m, session.user) })
    current = { match, unsubscribe: () => sub.unsubscribe() }
  }
  const send = (type: 'match.join' | 'match.ready' | 'match.leave') => () => {
    if (current) client.publish({ type, data: { match: current.match } }).catch(showError)
  }
  $('join').addEventListener('click', send('match.join'))
  $('ready').addEventListener('click', send('match.ready'))
  $('leave').addEventListener('click', send('match.leave'))
  $('play').addEventListener('click', () => {
    if (current) void fetch(`/demo/matches/${current.match}/play`, { method: 'POST' }).catch(showError)
  })
  $('next-match').addEventListener('click', () => void show().catch(showError))
  client.subscribe(`user:${session.user}`, {
    onUpdate: (u) => {
      if (u.kind === 'match.join') $('decision').textContent = u.accepted ? `you have a seat in ${u.match}` : `no seat in ${u.match}: ${u.reason}`
    },
  })
  void show().catch(showError)
}

function showError(err: unknown) {
  const pill = $('status')
  pill.title = String((err as Error)?.message ?? err)
}

async function main() {
  const name = await askName()
  const session = await signIn(name)
  $('who').textContent = session.name
  $('app').hidden = false
  let unused: string | undefined = session.token
  const client = createClient({
    urls: [location.origin],
    // Called whenever a token is needed: connecting (the one we have), on `token_expiring`, or
    // when a reconnect needs a fresh one (a game would ask its own auth service).
    token: async () => {
      const token = unused ?? (await signIn(name)).token
      unused = undefined
      return token
    },
  })
  start(client, session)
  lobby(client, session)
  // For the browser test and the curious: the client, on the console.
  ;(window as unknown as { fanfare: Client }).fanfare = client
}

void main().catch((err) => {
  document.body.append(el('pre', { class: 'error' }, String(err?.stack ?? err)))
})

/**
 * The arcade: a small page on @fanfare/client. A live leaderboard, a chat room, reactions on a
 * stage with its viewer count. Every panel is one `subscribe`: the SDK keeps each state exact
 * (resuming after any reconnect), so rendering is a function of `state` and nothing else.
 */
import { createClient, type Client, type StateOf } from '../../client/src'

const BOARD = 'arena'
const ROOM = 'lobby'
const STAGE = 'main-stage'
const EMOJIS = ['👏', '🔥', '❤️', '😂']

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
  // For the browser test and the curious: the client, on the console.
  ;(window as unknown as { fanfare: Client }).fanfare = client
}

void main().catch((err) => {
  document.body.append(el('pre', { class: 'error' }, String(err?.stack ?? err)))
})

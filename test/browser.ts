import { existsSync } from 'node:fs'
import { chromium, type Browser, type Locator } from 'playwright-core'

/** Debian's chromium (installed by .ci/run), or CHROMIUM_PATH. */
const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium'

/**
 * Starts the headless Chromium every browser test drives; says how to get one when it is missing.
 * `hosts` names that resolve to 127.0.0.1 in it, for pages that behave differently on a local host.
 */
export function launchChromium(opts: { hosts?: string[] } = {}): Promise<Browser> {
  if (!existsSync(CHROMIUM)) throw new Error(`no Chromium at ${CHROMIUM} (bash .ci/run installs Debian's chromium; or set CHROMIUM_PATH)`)
  const rules = (opts.hosts ?? []).map((host) => `MAP ${host} 127.0.0.1`)
  return chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox', ...(rules.length > 0 ? [`--host-resolver-rules=${rules.join(',')}`] : [])] })
}

/**
 * Whether, in the first text node under `locator` holding `needle` (its last occurrence with
 * `last`), the needle's characters `from` and `from + 1` are laid out left to right: false when a
 * right-to-left override in the text before them turned them around; null when no text node holds it.
 *
 * Measured again when the element was replaced between the locator finding it and the measure
 * (pages that poll re-render their lists): a detached node has no layout, every position is 0,
 * which read as "turned around" (the console test failed so once in CI).
 */
export async function readsForward(locator: Locator, needle: string, opts: { from: number; last?: boolean }): Promise<boolean | null> {
  for (let attempt = 0; attempt < 20; attempt++) {
    const answer = await locator.evaluate(
      (el, { needle, from, last }) => {
        if (!el.isConnected) return 'detached' as const
        const walker = document.createTreeWalker(el, NodeFilter.SHOW_TEXT)
        for (let n = walker.nextNode(); n; n = walker.nextNode()) {
          const text = n.textContent!
          const at = last ? text.lastIndexOf(needle) : text.indexOf(needle)
          if (at < 0) continue
          const x = (i: number) => {
            const r = document.createRange()
            r.setStart(n!, i)
            r.setEnd(n!, i + 1)
            return r.getBoundingClientRect().x
          }
          return x(at + from) < x(at + from + 1)
        }
        return null
      },
      { needle, from: opts.from, last: opts.last ?? false },
    )
    if (answer !== 'detached') return answer
  }
  throw new Error(`the element holding "${needle}" was replaced at every measure`)
}

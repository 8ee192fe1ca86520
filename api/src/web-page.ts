/**
 * Serving a browser page from files in the repo (the arcade demo, the admin console): every asset
 * from this node, nothing from a CDN (many servers have no internet). The page's script is bundled
 * from its TypeScript by Bun.build on first request and kept in memory.
 */

const NO_CACHE = { 'cache-control': 'no-cache' }

/** A handler answering `dir/path` as it is on disk, with `type` as its content type (and `headers`). */
export const fileAsset =
  (dir: string, path: string, type: string, headers: Record<string, string> = {}) =>
  () =>
    new Response(Bun.file(`${dir}/${path}`), { headers: { 'content-type': type, ...NO_CACHE, ...headers } })

/**
 * A handler answering the browser bundle of `entry` (ESM, minified), built on the first request.
 * A failed build is reported to that request (500) and tried again on the next.
 */
export function scriptBundle(entry: string): () => Promise<Response> {
  let bundle: Promise<string> | undefined
  const build = async () => {
    const out = await Bun.build({ entrypoints: [entry], target: 'browser', format: 'esm', minify: true })
    if (!out.success) throw new Error(`building ${entry} failed: ${out.logs.map(String).join('\n')}`)
    return out.outputs[0].text()
  }
  return async () => {
    bundle ??= build().catch((err) => {
      bundle = undefined
      throw err
    })
    return new Response(await bundle, { headers: { 'content-type': 'text/javascript; charset=utf-8', ...NO_CACHE } })
  }
}

#!/usr/bin/env node
// `npm start` and `npm test` on a machine that has only Node and npm.
//
//   node scripts/bootstrap.mjs start [args]   -> bun scripts/all-in-one.ts [args]
//   node scripts/bootstrap.mjs test  [args]   -> bun test [args], then one line "N passed, N failed"
//
// Plain Node ESM with no dependencies: it runs before node_modules exists. Bun comes from the npm
// registry (the `bun` package ships the binary through an optional platform package and a
// postinstall script), so "installed" means `node_modules/.bin/bun --version` really runs: npm can
// skip install scripts and leave a placeholder behind.

import { spawn, spawnSync } from 'node:child_process'
import { existsSync, readFileSync } from 'node:fs'
import { availableParallelism, constants } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = dirname(dirname(fileURLToPath(import.meta.url)))
const isWindows = process.platform === 'win32'
const bunPath = join(root, 'node_modules', '.bin', isWindows ? 'bun.exe' : 'bun')

const DEFAULT_TEST_TIMEOUT_MS = 60_000
/** Each test file's last duration (bun test --timings), relative to the root, where bun test runs. */
const TIMINGS = join('test', 'timings.json')
/** Signals closer together than this are one Ctrl-C (see run). */
const REPEAT_MS = 500

const [mode, ...rest] = process.argv.slice(2)
if (mode !== 'start' && mode !== 'test') {
  console.error('usage: node scripts/bootstrap.mjs start|test [args...]')
  process.exit(2)
}

ensureBun()
if (mode === 'start') {
  // --exit-with-parent: all-in-one stops if we die, even by SIGKILL (it watches its parent pid).
  run([join('scripts', 'all-in-one.ts'), '--exit-with-parent', ...rest], { summarize: false, group: !isWindows })
} else {
  // bun test's own default is 5 s per test, too short for the integration tests under load, and
  // bunfig.toml cannot change it (bun reads a timeout only from --timeout or setDefaultTimeout).
  const timeout = rest.some((arg) => arg.startsWith('--timeout')) ? [] : [`--timeout=${DEFAULT_TEST_TIMEOUT_MS}`]
  // Files in parallel, one worker process per core and one more (at most 4): each test has its own
  // database and stream prefix, and most of a test's time is waiting for processes it started (or
  // for pg_sleep, timeouts, backoffs). On 2 cores, 2 workers took the suite from ~1,050 s to ~655 s
  // when it was smaller; at 1,043 tests 2 workers took 982 s with the machine's cores 2/3 idle at
  // times, 3 workers 741 s (74% busy). FANFARE_TEST_WORKERS=1 runs the files one after another.
  const workers = Number(process.env.FANFARE_TEST_WORKERS ?? Math.min(4, availableParallelism() + 1))
  const parallel = rest.some((arg) => arg.startsWith('--parallel')) || !(workers > 1) ? [] : [`--parallel=${workers}`]
  // The slowest files start first (bun reads their last durations from test/timings.json), so no
  // 100 s file starts last and runs alone: `npm run test:timings` measures them again.
  const timings = rest.some((arg) => arg.startsWith('--timings')) || !existsSync(join(root, TIMINGS)) ? [] : [`--timings=${TIMINGS}`]
  run(['test', ...timeout, ...parallel, ...timings, ...rest], { summarize: true })
}

/** The bun version if node_modules/.bin/bun runs, else null. */
function bunVersion() {
  if (!existsSync(bunPath)) return null
  const r = spawnSync(bunPath, ['--version'], { encoding: 'utf8', timeout: 30_000 })
  const out = (r.stdout ?? '').trim()
  return r.status === 0 && /^\d+\.\d+\.\d+/.test(out) ? out : null
}

/** Installs dependencies when bun is missing or does not run; exits with a message if that fails. */
function ensureBun() {
  if (bunVersion()) return
  const lock = existsSync(join(root, 'package-lock.json'))
  const args = [lock ? 'ci' : 'install', '--no-audit', '--no-fund']
  log(`bun is not installed or does not run: npm ${args.join(' ')}`)
  // Progress goes to stderr so that stdout keeps only the program's (or the tests') output.
  const npm = npmCommand()
  const r = spawnSync(npm.cmd, [...npm.args, ...args], { cwd: root, stdio: ['ignore', 2, 2], shell: npm.shell })
  if (r.status !== 0) fail(`npm ${args[0]} failed (exit ${r.status ?? r.signal})`)
  if (bunVersion()) return
  // Install scripts skipped (ignore-scripts): run bun's own postinstall, which puts the binary of
  // the platform package in place.
  const installer = join(root, 'node_modules', 'bun', 'install.js')
  if (existsSync(installer)) {
    log('bun still does not run (install scripts skipped?): running node_modules/bun/install.js')
    spawnSync(process.execPath, [installer], { cwd: join(root, 'node_modules', 'bun'), stdio: ['ignore', 2, 2] })
  }
  const version = bunVersion()
  if (!version) {
    fail(
      'bun does not run after installing dependencies. Check that npm can reach the registry and that\n' +
        'install scripts are allowed (npm config get ignore-scripts), or install Bun from https://bun.sh',
    )
  }
  log(`bun ${version} ready`)
}

/** npm itself: the one running us when started through `npm start/test`, else npm on PATH. */
function npmCommand() {
  const execPath = process.env.npm_execpath
  if (execPath && /npm-cli\.js$/.test(execPath)) return { cmd: process.execPath, args: [execPath], shell: false }
  return { cmd: isWindows ? 'npm.cmd' : 'npm', args: [], shell: isWindows }
}

/**
 * Runs bun with signals forwarded and its exit status passed on. With `summarize`, bun's stderr
 * is copied through while its summary (" N pass", " N fail") is read, and the last line printed is
 * "N passed, N failed"; the exit status is non-zero on any failure or when no test ran.
 *
 * With `group` (npm start), bun runs in a process group of its own, which holds everything it
 * starts (the embedded nats-server): a Ctrl-C reaches bun only through us, once per press; the
 * first press asks bun to stop gracefully, a second one kills the whole group at once; and when bun
 * exits, whatever is left of its group is killed. Should we be killed ourselves (even SIGKILL),
 * bun notices that it lost its parent and stops (see all-in-one.ts).
 */
function run(args, { summarize, group = false }) {
  const child = spawn(bunPath, args, {
    cwd: root,
    stdio: ['inherit', 'inherit', summarize ? 'pipe' : 'inherit'],
    detached: group,
  })
  const running = () => child.exitCode === null && child.signalCode === null
  const forward = (signal) => {
    if (running()) child.kill(signal)
  }
  const killGroup = () => {
    try {
      process.kill(-child.pid, 'SIGKILL')
    } catch {
      // nothing left in the group
    }
  }
  let presses = 0
  let lastSignalAt = -Infinity
  const onSignal = (signal) => {
    if (!group) return forward(signal)
    // One Ctrl-C in a terminal reaches us twice: from the terminal and forwarded by npm. Signals
    // this close together are one press.
    const now = Date.now()
    if (now - lastSignalAt < REPEAT_MS) return
    lastSignalAt = now
    presses++
    if (presses === 1) return forward(signal)
    log(`${signal} again: killing Fanfare and everything it started now`)
    killGroup()
  }
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP']) process.on(signal, () => onSignal(signal))
  // `npm start` runs us through `sh -c`; a SIGTERM sent to npm (a process manager, `kill <npm>`)
  // ends npm and that shell without reaching us. Losing our parent is that signal: pass it on.
  // npm killed by SIGKILL leaves that shell behind (it waits for us), so watch npm itself too.
  const parent = process.ppid
  const npm = process.env.npm_lifecycle_event ? parentOf(parent) : null
  const watch = setInterval(() => {
    if (process.ppid !== parent || (npm !== null && npmGone(parent, npm))) {
      clearInterval(watch)
      forward('SIGTERM')
    }
  }, 500)
  watch.unref()

  const counts = { pass: null, fail: null, errors: 0 }
  if (summarize) {
    let buffer = ''
    child.stderr.on('data', (chunk) => {
      process.stderr.write(chunk)
      buffer += chunk.toString('utf8')
      let nl
      while ((nl = buffer.indexOf('\n')) >= 0) {
        readSummaryLine(buffer.slice(0, nl), counts)
        buffer = buffer.slice(nl + 1)
      }
    })
    child.stderr.on('end', () => readSummaryLine(buffer, counts))
  }

  child.on('error', (err) => fail(`could not run ${bunPath}: ${err.message}`))
  child.on('close', (code, signal) => {
    // bun is gone: so must be anything it left in its group (a nats-server it could not stop).
    if (group) killGroup()
    const status = code ?? 128 + (constants.signals[signal] ?? 1)
    if (!summarize) process.exit(status)
    const passed = counts.pass ?? 0
    // bun counts a file that fails to load as a failed test; an error thrown outside any test is
    // counted under " N error" and often also fails the test that was running: count it only
    // when no test failed, so the line never says 0 failed for a failing run.
    let failed = counts.fail ?? 0
    if (failed === 0) failed = counts.errors
    if (counts.pass === null && counts.fail === null) {
      process.stderr.write(`[bootstrap] bun test printed no summary (exit status ${status}): no tests ran\n`)
    }
    const ok = status === 0 && failed === 0 && passed > 0
    process.stdout.write(`${passed} passed, ${failed} failed\n`)
    process.exit(ok ? 0 : status || 1)
  })
}

/** The parent pid of `pid`: from /proc on Linux, else from ps; null if unknown. */
function parentOf(pid) {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1])
  } catch {
    // no /proc (macOS): ask ps
  }
  const r = spawnSync('ps', ['-o', 'ppid=', '-p', String(pid)], { encoding: 'utf8' })
  const ppid = Number((r.stdout ?? '').trim())
  return r.status === 0 && ppid > 0 ? ppid : null
}

/**
 * Whether npm, which started `shell` (our parent), is gone. With /proc: the shell has another
 * parent now (a dead npm's zombie or a reused pid cannot fool that). Without: npm's pid is free.
 */
function npmGone(shell, npm) {
  if (existsSync(`/proc/${shell}/stat`)) return parentOf(shell) !== npm
  try {
    process.kill(npm, 0)
    return false
  } catch (err) {
    return err.code === 'ESRCH'
  }
}

function readSummaryLine(raw, counts) {
  // eslint-disable-next-line no-control-regex
  const line = raw.replace(/\x1b\[[0-9;]*m/g, '').trim()
  let m
  if ((m = /^(\d+) pass$/.exec(line))) counts.pass = Number(m[1])
  else if ((m = /^(\d+) fail$/.exec(line))) counts.fail = Number(m[1])
  else if ((m = /^(\d+) errors?$/.exec(line))) counts.errors = Number(m[1])
}

function log(message) {
  process.stderr.write(`[bootstrap] ${message}\n`)
}

function fail(message) {
  process.stderr.write(`[bootstrap] ${message}\n`)
  process.exit(1)
}

import { cpus, freemem, loadavg, totalmem } from 'node:os'

/** The machine and the versions of everything measured, for the report header. */
export type Machine = {
  cores: number
  cpu: string
  memoryGiB: number
  freeMemoryGiB: number
  loadAverage: number[]
  bun: string
  node: string
  natsServer: string
  postgres: string
  ulimitNoFile: string
}

async function run(cmd: string[]): Promise<string> {
  try {
    const p = Bun.spawn(cmd, { stdout: 'pipe', stderr: 'pipe' })
    const [out, err] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text()])
    await p.exited
    return (out.trim() || err.trim()).split('\n')[0] ?? 'unknown'
  } catch {
    return 'unknown'
  }
}

/** Collects machine facts; `postgresVersion` is read by the caller over SQL. */
export async function describeMachine(postgresVersion: string): Promise<Machine> {
  return {
    cores: cpus().length,
    cpu: cpus()[0]?.model ?? 'unknown',
    memoryGiB: Math.round((totalmem() / 2 ** 30) * 10) / 10,
    freeMemoryGiB: Math.round((freemem() / 2 ** 30) * 10) / 10,
    loadAverage: loadavg().map((l) => Math.round(l * 100) / 100),
    bun: Bun.version,
    node: await run(['node', '--version']),
    natsServer: await run(['nats-server', '--version']),
    postgres: postgresVersion,
    ulimitNoFile: await run(['sh', '-c', 'ulimit -n']),
  }
}

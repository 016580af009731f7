import { readFileSync } from 'node:fs'
import inspector from 'node:inspector'
import { MemidError } from './errors.ts'

/** Set on the re-exec so that a second failure is reported instead of looping. */
const REEXEC_MARK = 'MEMID_HARDENED_EXEC'
const NO_SIGUSR1 = '--disable-sigusr1'
/** Every flag that opens the inspector: --inspect, --inspect-brk, --inspect-wait (with or without =addr). */
const INSPECT_FLAG = /(?:^|\s)(--inspect(?:-brk|-wait)?(?:-brk-node)?)(?:[=\s]|$)/

/** The process's core-size limit (soft, hard) as /proc shows it; undefined off Linux. */
export function coreSizeLimit(limitsText?: string): { soft: string; hard: string } | undefined {
  let text = limitsText
  if (text === undefined) {
    try {
      text = readFileSync('/proc/self/limits', 'utf8')
    } catch {
      return undefined
    }
  }
  const m = /^Max core file size\s+(\S+)\s+(\S+)/m.exec(text)
  return m ? { soft: m[1] as string, hard: m[2] as string } : undefined
}

/** The inspector flag in NODE_OPTIONS or node's own arguments, if any. */
export function inspectorFlag(nodeOptions: string | undefined, execArgv: readonly string[]): { flag: string; where: string } | undefined {
  const inOptions = INSPECT_FLAG.exec(nodeOptions ?? '')
  if (inOptions) return { flag: inOptions[1] as string, where: 'NODE_OPTIONS' }
  for (const a of execArgv) {
    const m = INSPECT_FLAG.exec(a)
    if (m) return { flag: m[1] as string, where: "node's command line" }
  }
  return undefined
}

/**
 * Makes a long-running memid process (agent or auth service) undebuggable and
 * undumpable before it reads any secret. Call it first thing in the command; it may
 * replace the process (same pid) and return only in the hardened one.
 *
 * - An inspector flag in `NODE_OPTIONS` or on node's command line is refused (exit 2):
 *   by the time this runs the inspector is already listening, so the process stops.
 * - SIGUSR1 is handled (ignored), so it cannot start the inspector.
 * - If the process does not already run with `--disable-sigusr1` and a core-size limit
 *   of 0 soft and hard, it re-executes itself in place (`process.execve`, same pid, same
 *   stdin) with node's `--disable-sigusr1`, through `/bin/sh -c 'ulimit -c 0 && exec "$@"'`
 *   when the limit is not 0 0 yet, then checks /proc/self/limits; still not 0 0 means a
 *   refusal to start, never a silent run.
 * - `nodeFlags` (the agent's heap settings) are added on the same re-execution, and their
 *   absence is a reason to re-execute too.
 */
export function hardenProcess(env: NodeJS.ProcessEnv = process.env, nodeFlags: readonly string[] = []): void {
  const inspect = inspectorFlag(env.NODE_OPTIONS, process.execArgv)
  if (inspect !== undefined || inspector.url() !== undefined) {
    inspector.close()
    const what = inspect === undefined ? 'the Node inspector is open' : `${inspect.where}: ${inspect.flag} opens the Node inspector`
    throw new MemidError('ERR_USAGE', `${what}, and any local user could attach to it and read every key in memory; remove it (NODE_OPTIONS and node flags) and start again`)
  }
  // With --disable-sigusr1 node ignores the signal; without it (before the re-exec, or
  // on a platform without one) a JS handler replaces node's, which would open 9229.
  process.on('SIGUSR1', () => undefined)

  const reexeced = env[REEXEC_MARK] === '1'
  delete env[REEXEC_MARK]
  if (process.platform === 'win32') return
  const limit = coreSizeLimit()
  const noCore = limit === undefined ? reexeced : limit.soft === '0' && limit.hard === '0'
  const missing = [NO_SIGUSR1, ...nodeFlags].filter((f) => !process.execArgv.includes(f))
  if (noCore && missing.length === 0) return
  if (reexeced) {
    throw new MemidError('ERR_HARDENING', `cannot run with a core-size limit of 0 (now ${limit ? `${limit.soft} ${limit.hard}` : 'unknown'}) and ${NO_SIGUSR1}: start memid under "ulimit -c 0" (systemd: LimitCORE=0) with node ${NO_SIGUSR1}`)
  }
  if (typeof process.execve !== 'function') {
    // Node 22.13/22.14 (SPEC's minimum) have no execve: set the limit on this very
    // process from outside with util-linux prlimit; SIGUSR1 stays on the JS handler above.
    // Loaded only here: node:child_process is ~8 ms of CPU in the process that is about to be replaced.
    const { spawnSync } = process.getBuiltinModule('node:child_process')
    const r = spawnSync('prlimit', ['--pid', String(process.pid), '--core=0:0'], { stdio: 'ignore', env: {} })
    const after = coreSizeLimit()
    if (r.status === 0 && after?.soft === '0' && after.hard === '0') return
    throw new MemidError('ERR_HARDENING', `cannot drop the core-size limit to 0: this Node has no process.execve (>= 22.15) and prlimit failed; start memid under "ulimit -c 0" with node ${NO_SIGUSR1}`)
  }
  const node = [process.execPath, ...missing, ...process.execArgv, ...process.argv.slice(1)]
  // Already 0 0 (systemd LimitCORE=0): only the flag is missing, no shell needed (and no
  // setrlimit call that a seccomp filter might refuse).
  const [file, args] = noCore ? [process.execPath, node] : ['/bin/sh', ['sh', '-c', 'ulimit -c 0 && exec "$@"', 'memid', ...node]]
  try {
    process.execve(file, args, { ...env, [REEXEC_MARK]: '1' })
  } catch (err) {
    throw new MemidError('ERR_HARDENING', `cannot re-execute ${noCore ? 'node' : 'under a core-size limit of 0 through /bin/sh'} (${(err as NodeJS.ErrnoException).code ?? 'error'}): start memid under "ulimit -c 0" with node ${NO_SIGUSR1}`)
  }
}

import type { Command } from 'commander'
import type { DevFlags } from './dev.ts'
import { AGENT_NODE_FLAGS } from '../core/gc.ts'
import { hardenProcess } from '../core/harden.ts'

/** Registers `memid dev`; its implementation is loaded only when it runs. */
export function registerDevCommand(program: Command): void {
  program.command('dev')
    .description('embedded default: auth service (in-memory) + bot + agent in one process')
    .option('--listen <host:port>', 'auth service address', '127.0.0.1:0')
    .option('--data-dir <dir>', 'keep the store (and so the CAs) in DIR instead of memory, so servers can trust them across runs')
    .option('--certificate-ttl <duration>', 'certificate lifetime', '1h')
    .option('--renewal-interval <duration>', 'renewal interval', '20m')
    .option('--diag-addr <host:port>', 'diagnostics address', '127.0.0.1:0')
    .option('--kube-server <url>', 'register a Kubernetes API server and proxy it (https://HOST:PORT)')
    .option('--kube-ca-file <pem>', "CA of the Kubernetes API server's certificate")
    .option('--kube-listen <host:port>', 'kube proxy address', '127.0.0.1:8001')
    .option('--db-uri <uri>', 'register a PostgreSQL server and tunnel to it (postgres://HOST:PORT)')
    .option('--db-ca-file <pem>', "CA of the database server's certificate")
    .option('--db-user <name>', 'database user for the tunnel', 'app')
    .option('--db-name <name>', 'database name for the tunnel')
    .option('--db-listen <host:port>', 'tunnel address', '127.0.0.1:6432')
    .option('--log-format <format>', 'json or text', 'text')
    .action(async (f: DevFlags) => {
      hardenProcess(process.env, AGENT_NODE_FLAGS)
      const { runDev } = await import('./dev.ts')
      await runDev(f)
    })
}

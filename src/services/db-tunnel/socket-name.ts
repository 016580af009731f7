import path from 'node:path'

/** What PostgreSQL clients look for in a socket directory: `.s.PGSQL.<port>`. */
export const PG_SOCKET = /^\.s\.PGSQL\.(\d{1,5})$/

/** The port psql must be given for a unix listener (`-p`), from `.s.PGSQL.<port>`. */
export function socketPort(socketPath: string): number | undefined {
  const m = PG_SOCKET.exec(path.basename(socketPath))
  return m ? Number(m[1]) : undefined
}

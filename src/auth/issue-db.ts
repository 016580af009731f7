import type { DbCertRequest, DbCertResponse } from '../api/types.ts'
import { issueLeaf } from '../pki/x509.ts'
import { MemidError } from '../core/errors.ts'
import { allows, allowsDbUser, denied } from './rbac.ts'
import type { IssueContext } from './issuer.ts'
import { resourceAuthority } from './cas.ts'

/**
 * A client certificate from the database's own client CA with CN = the database user, as
 * the roles allow. The database name is not in the certificate: PostgreSQL's `cert`
 * authentication checks only the user (README: what a role's database names enforce).
 */
export async function issueDbCertificate(ctx: IssueContext, req: DbCertRequest): Promise<DbCertResponse> {
  const db = await ctx.store.getResource('db', req.service)
  if (db === undefined) throw new MemidError('ERR_NOT_FOUND', `database "${req.service}" is not registered (memid dbs add)`)
  if (!allows(ctx.roles, 'databases', req.service)) {
    throw denied(`bot "${ctx.bot.name}" has no role granting database "${req.service}"`)
  }
  if (!allowsDbUser(ctx.roles, req.service, req.username, req.database)) {
    const what = req.database === undefined
      ? `user "${req.username}" with no database name (the roles grant only named databases: set one in the tunnel, e.g. …=${req.service}/${req.username}/DBNAME)`
      : `user "${req.username}" on database name "${req.database}"`
    throw denied(`bot "${ctx.bot.name}" is not allowed to connect to "${req.service}" as ${what}`)
  }
  const cert = await issueLeaf({
    ca: await resourceAuthority(ctx.store, 'db', db.name), publicKey: ctx.publicKey, commonName: req.username,
    ttlMs: ctx.ttlMs, usage: 'client', now: ctx.now,
  })
  return {
    certificate: cert.pem, serial: cert.serial, user: req.username,
    notBefore: cert.notBefore.toISOString(), notAfter: cert.notAfter.toISOString(),
    upstream: { name: db.name, uri: db.uri, ...(db.caPem ? { caPem: db.caPem } : {}) },
  }
}

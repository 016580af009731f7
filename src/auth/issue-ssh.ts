import { randomBytes } from 'node:crypto'
import type { SshCertRequest, SshCertResponse } from '../api/types.ts'
import { parseSshCertificate, signSshCertificate, sshCertificateLine } from '../pki/openssh.ts'
import { leafKeyObject } from '../pki/x509.ts'
import { denied, unionOf } from './rbac.ts'
import type { IssueContext } from './issuer.ts'

/** Clock skew allowance: certificates are valid from a minute before they were issued. */
export const SSH_BACKDATE_MS = 60_000

/**
 * What a user certificate permits besides the shell: a pty and port forwarding, but not
 * agent forwarding (the agent is the bot's identity; it should not travel by default).
 */
export const SSH_USER_EXTENSIONS: Readonly<Record<string, string>> = { 'permit-port-forwarding': '', 'permit-pty': '' }

/** A random, non-zero 63-bit serial: unique in practice, and printed the same everywhere. */
export function randomSshSerial(): bigint {
  const b = randomBytes(8)
  b[0] = (b[0] as number) & 0x7f
  const serial = b.readBigUInt64BE()
  return serial === 0n ? 1n : serial
}

/**
 * An OpenSSH user certificate from the `ssh-user` CA. Principals are the logins of the
 * bot's roles, or the subset the request names; asking for any other login is refused.
 */
export async function issueSshCertificate(ctx: IssueContext, req: SshCertRequest): Promise<SshCertResponse> {
  const logins = unionOf(ctx.roles, 'logins')
  if (logins.length === 0) throw denied(`bot "${ctx.bot.name}" has no SSH logins (memid roles add NAME --logins …)`)
  let principals = logins
  if (req.principals !== undefined) {
    const outside = req.principals.filter((p) => !logins.includes(p))
    if (outside.length > 0) {
      throw denied(`SSH login${outside.length > 1 ? 's' : ''} ${outside.map((p) => `"${p}"`).join(', ')} not granted to bot "${ctx.bot.name}"; allowed: ${logins.join(', ')}`)
    }
    if (req.principals.length === 0) throw denied('principals: name at least one login, or leave it out for all of them')
    principals = [...new Set(req.principals)].sort()
  }
  const validAfter = new Date(Math.floor((ctx.now - SSH_BACKDATE_MS) / 1000) * 1000)
  const validBefore = new Date(Math.floor((ctx.now + ctx.ttlMs) / 1000) * 1000)
  const keyId = `bot=${ctx.bot.name} instance=${ctx.instance.id}`
  const blob = signSshCertificate({
    type: 'user', publicKey: leafKeyObject(ctx.publicKey), caKey: ctx.cas.sshUser.key, serial: randomSshSerial(),
    keyId, principals, validAfter, validBefore, extensions: { ...SSH_USER_EXTENSIONS },
  })
  const serial = parseSshCertificate(blob).serial
  return {
    certificate: sshCertificateLine(blob, `memid:${ctx.bot.name}`),
    serial: serial.toString(), keyId, principals,
    notBefore: validAfter.toISOString(), notAfter: validBefore.toISOString(),
  }
}

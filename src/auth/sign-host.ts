import type { KeyObject } from 'node:crypto'
import { MemidError } from '../core/errors.ts'
import { parseSshPublicKeyLine, signSshCertificate, sshCertificateLine } from '../pki/openssh.ts'
import { randomSshSerial, SSH_BACKDATE_MS } from './issue-ssh.ts'

export interface SignHostOptions {
  /** The `ssh-host` CA's private key. */
  caKey: KeyObject
  /** Names clients will connect to (host names or IP addresses); the certificate's principals. */
  hosts: string[]
  /** The server's public host key, as in `/etc/ssh/ssh_host_ed25519_key.pub`. */
  publicKeyLine: string
  ttlMs: number
  now?: number
}

/**
 * Issues an OpenSSH host certificate for a server's host key and returns the certificate
 * line, ready for the file sshd's `HostCertificate` names. This runs on the server
 * administrator's side; writing that file is expected.
 */
export function signHostCertificate(opts: SignHostOptions): string {
  const hosts = [...new Set(opts.hosts.map((h) => h.trim()).filter((h) => h.length > 0))]
  if (hosts.length === 0) throw new MemidError('ERR_USAGE', '--host: name at least one host name or address')
  const bad = hosts.find((h) => !/^[A-Za-z0-9.*?:_\-[\]]+$/.test(h))
  if (bad !== undefined) throw new MemidError('ERR_USAGE', `--host: "${bad.replace(/[^\x20-\x7e]/g, '?').slice(0, 60)}" is not a host name or address`)
  if (!(opts.ttlMs > 0)) throw new MemidError('ERR_USAGE', '--ttl: must be positive')
  const publicKey = parseSshPublicKeyLine(opts.publicKeyLine)
  const now = opts.now ?? Date.now()
  const blob = signSshCertificate({
    type: 'host', publicKey, caKey: opts.caKey, serial: randomSshSerial(),
    keyId: `memid host ${hosts[0]}`, principals: hosts,
    validAfter: new Date(now - SSH_BACKDATE_MS), validBefore: new Date(now + opts.ttlMs),
  })
  return sshCertificateLine(blob, `memid host ${hosts[0]}`)
}

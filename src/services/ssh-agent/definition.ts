import { generateKeyPairSync } from 'node:crypto'
import { z } from 'zod'
import { ConfigError } from '../../core/errors.ts'
import { principalSchema } from '../../core/validate.ts'
import { parseSshPublicKeyLine } from '../../pki/openssh.ts'
import type { SshCredential } from '../../credentials/credentials.ts'
import { spkiPem } from '../../credentials/issuer.ts'
import { defineService } from '../definition.ts'
import { resolveSshAgentConfig, type ResolvedSshAgentConfig } from './config.ts'
import { sshCredential } from './credential.ts'

const keyType = z.enum(['ed25519', 'ecdsa', 'rsa'])
const principals = z.array(principalSchema).min(1).max(64)

const options = z.strictObject({
  type: z.literal('ssh-agent'),
  /** Absolute path of the agent socket (`SSH_AUTH_SOCK`). */
  path: z.string(),
  /** The certificate's key type (default ed25519). */
  keyType: keyType.optional(),
  /** Subset of the roles' logins to request; all of them when omitted. */
  principals: principals.optional(),
})

const file = z.strictObject({ type: z.literal('ssh-agent'), path: z.string(), key_type: keyType.optional(), principals: principals.optional() })

/** `services[]: { type: ssh-agent, … }` as a program passes it to `startAgent()`. */
export type SshAgentOptions = z.infer<typeof options>

export interface SshAgentSettings extends ResolvedSshAgentConfig {
  keyType: z.infer<typeof keyType>
  principals?: string[]
}

/** The SSH agent: an OpenSSH user certificate and its key on a unix socket. */
export const sshAgent = defineService<'ssh-agent', SshAgentOptions, z.infer<typeof file>, SshAgentSettings, SshCredential>({
  type: 'ssh-agent',
  options,
  file,
  fromFile: (f) => ({ type: 'ssh-agent', path: f.path, ...(f.key_type ? { keyType: f.key_type } : {}), ...(f.principals ? { principals: f.principals } : {}) }),
  flag: {
    name: 'ssh-agent', value: '<path>', description: 'serve an SSH agent on this socket', repeatable: false,
    parse(value) {
      if (!value.startsWith('/')) throw new ConfigError(`must be an absolute socket path, got "${value.slice(0, 80)}"`)
      return { type: 'ssh-agent', path: value }
    },
  },
  max: 1,
  resolve: (o) => ({ ...resolveSshAgentConfig({ path: o.path }), keyType: o.keyType ?? 'ed25519', ...(o.principals ? { principals: o.principals } : {}) }),
  name: () => 'ssh-agent',
  address: (s) => s.address,
  async issue(s, issuer) {
    const { privateKey } = s.keyType === 'ecdsa'
      ? generateKeyPairSync('ec', { namedCurve: 'P-256' })
      : s.keyType === 'rsa' ? generateKeyPairSync('rsa', { modulusLength: 3072 }) : generateKeyPairSync('ed25519')
    const res = await issuer.issueSsh({ publicKey: spkiPem(privateKey), ttl: issuer.ttl, ...(s.principals ? { principals: s.principals } : {}) })
    // Checked against our key and the pinned cluster's ssh-user CA before it is served.
    return sshCredential(privateKey, res.certificate, parseSshPublicKeyLine(issuer.sshUserCa))
  },
  async build(s, deps) {
    const { buildSshAgentService } = await import('./index.ts')
    return buildSshAgentService(s, deps)
  },
})

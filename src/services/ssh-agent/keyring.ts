import { sign, type KeyObject } from 'node:crypto'
import type { SshCredential } from '../../credentials/credentials.ts'
import { MemidError } from '../../core/errors.ts'
import { parseSshCertificate, sshFingerprint, sshKeyType, sshPublicKeyBlob, sshSign } from '../../pki/openssh.ts'
import { frame, identitiesAnswer, SSH_AGENT_SIGN_RESPONSE, strings } from './protocol.ts'

const ED25519_SIG_LEN = 64

/**
 * One SSH credential prepared for serving: the identities answer and the signature
 * response header are built once per renewal, so a sign request costs one key-blob
 * compare, one `crypto.sign` and one small buffer.
 */
export class Keyring {
  readonly credential: SshCredential
  /** The whole IDENTITIES_ANSWER frame. */
  readonly identities: Buffer
  readonly fingerprint: string
  readonly #key: KeyObject
  readonly #cert: Buffer
  readonly #plain: Buffer
  readonly #servePlain: boolean
  /** For Ed25519: the SIGN_RESPONSE frame up to the 64 signature bytes. */
  readonly #ed25519Head: Buffer | undefined

  constructor(credential: SshCredential, opts: { plainKey: boolean }) {
    const cert = parseSshCertificate(credential.certificateBlob)
    const plain = sshPublicKeyBlob(credential.privateKey)
    if (!cert.publicKeyBlob.equals(plain) || !credential.publicKeyBlob.equals(plain)) {
      throw new MemidError('ERR_INTERNAL', `SSH certificate ${credential.serial} does not certify the agent's key`)
    }
    this.credential = credential
    this.#key = credential.privateKey
    this.#cert = credential.certificateBlob
    this.#plain = plain
    this.#servePlain = opts.plainKey
    this.fingerprint = sshFingerprint(plain)
    const comment = credential.keyId
    this.identities = identitiesAnswer(opts.plainKey
      ? [{ blob: this.#cert, comment }, { blob: plain, comment }]
      : [{ blob: this.#cert, comment }])
    if (sshKeyType(this.#key) === 'ssh-ed25519') {
      const sigBlobLen = 4 + 11 + 4 + ED25519_SIG_LEN
      const full = frame(SSH_AGENT_SIGN_RESPONSE, strings(Buffer.alloc(sigBlobLen)))
      const headLen = full.length - ED25519_SIG_LEN
      full.write('ssh-ed25519', 9 + 4, 'latin1')
      full.writeUInt32BE(11, 9)
      full.writeUInt32BE(ED25519_SIG_LEN, 9 + 4 + 11)
      this.#ed25519Head = Buffer.from(full.subarray(0, headLen))
    }
  }

  /** True when buf[start, end) is the certificate or (if served) the plain key blob. */
  has(buf: Buffer, start: number, end: number): boolean {
    const n = end - start
    if (n === this.#cert.length && this.#cert.compare(buf, start, end) === 0) return true
    return this.#servePlain && n === this.#plain.length && this.#plain.compare(buf, start, end) === 0
  }

  /** The SIGN_RESPONSE frame for `data`; RSA keys honour the SHA-2 flags. */
  signFrame(data: Buffer, flags: number): Buffer {
    const head = this.#ed25519Head
    if (head !== undefined) {
      const sig = sign(null, data, this.#key)
      const out = Buffer.allocUnsafe(head.length + ED25519_SIG_LEN)
      head.copy(out, 0)
      sig.copy(out, head.length)
      return out
    }
    return frame(SSH_AGENT_SIGN_RESPONSE, strings(sshSign(this.#key, data, flags)))
  }
}

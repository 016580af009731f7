import type { KeyObject } from 'node:crypto'
import type { SshCredential } from '../../credentials/credentials.ts'
import { MemidError } from '../../core/errors.ts'
import { parseSshCertificateLine, sshPublicKeyBlob, verifySshCertificate } from '../../pki/openssh.ts'

/**
 * Builds the SshCredential the agent serves from its private key and the certificate line
 * the auth service returned. Refuses a certificate for another key, a host certificate,
 * or (when `userCa` is given) one the cluster's ssh-user CA did not sign.
 */
export function sshCredential(privateKey: KeyObject, certificateLine: string, userCa?: KeyObject): SshCredential {
  const cert = parseSshCertificateLine(certificateLine)
  const publicKeyBlob = sshPublicKeyBlob(privateKey)
  if (!cert.publicKeyBlob.equals(publicKeyBlob)) throw new MemidError('ERR_AUTH_BAD_RESPONSE', 'the SSH certificate from the auth service is for another key')
  if (cert.certType !== 'user') throw new MemidError('ERR_AUTH_BAD_RESPONSE', 'the auth service returned an SSH host certificate, not a user certificate')
  if (userCa !== undefined && !verifySshCertificate(cert, userCa)) {
    throw new MemidError('ERR_AUTH_BAD_RESPONSE', 'the SSH certificate from the auth service is not signed by the cluster ssh-user CA')
  }
  return {
    kind: 'ssh',
    privateKey,
    publicKeyBlob,
    certificateBlob: cert.blob,
    certificateType: cert.type,
    principals: cert.principals,
    keyId: cert.keyId,
    serial: cert.serial.toString(),
    notBefore: cert.validAfter,
    notAfter: cert.validBefore,
  }
}

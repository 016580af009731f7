// Inputs that are not SSH keys at all, and what the refusal says.
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { createSecretKey } from 'node:crypto'
import { MemidError } from '../../../src/core/errors.ts'
import { sshKeyType, sshPlainKeyBlob } from '../../../src/pki/openssh.ts'

describe('inputs that are not SSH keys', () => {
  it('a secret (symmetric) key has no SSH type, and says so', () => {
    assert.throws(() => sshKeyType(createSecretKey(Buffer.alloc(32))), (err: unknown) => err instanceof MemidError && /^unsupported SSH key type \? \(supported/.test(err.message))
  })

  it('sshPlainKeyBlob of a truncated blob names it as an SSH public key', () => {
    assert.throws(() => sshPlainKeyBlob(Buffer.of(0, 0, 0, 9, 0x73)), (err: unknown) => err instanceof MemidError && err.message === 'SSH public key is truncated')
  })
})

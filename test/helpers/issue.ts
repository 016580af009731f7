/** Shared pieces of the issue-*.ts unit tests: a role granting only what a test names, and a typed refusal check. */
import assert from 'node:assert/strict'
import { MemidError } from '../../src/core/errors.ts'
import type { Role } from '../../src/storage/store.ts'

/** A role that grants nothing but `grant`. */
export function role(name: string, grant: Partial<Omit<Role, 'name' | 'createdAt'>>): Role {
  return { name, logins: [], kubeClusters: [], kubeUsers: [], kubeGroups: [], databases: [], dbUsers: [], dbNames: [], createdAt: '', ...grant }
}

/** `p` rejects with a MemidError of `code` whose message matches `message`. */
export async function refused(p: Promise<unknown>, code: string, message: RegExp): Promise<void> {
  await assert.rejects(p, (err: unknown) => {
    assert.ok(err instanceof MemidError, String(err))
    assert.equal(err.code, code, err.message)
    assert.match(err.message, message)
    return true
  })
}

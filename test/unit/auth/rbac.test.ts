import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { allows, allowsDbUser, denied, unionOf } from '../../../src/auth/rbac.ts'
import { MemidError } from '../../../src/core/errors.ts'
import type { Role } from '../../../src/storage/store.ts'

function role(name: string, over: Partial<Role> = {}): Role {
  return {
    name, logins: [], kubeClusters: [], kubeUsers: [], kubeGroups: [], databases: [], dbUsers: [], dbNames: [],
    createdAt: '2030-01-01T00:00:00.000Z', ...over,
  }
}

describe('unionOf', () => {
  it('unites one field over the roles, sorted and without repeats', () => {
    const roles = [role('a', { logins: ['ops', 'deploy'] }), role('b', { logins: ['deploy', 'ci'] }), role('c')]
    assert.deepEqual(unionOf(roles, 'logins'), ['ci', 'deploy', 'ops'])
    assert.deepEqual(unionOf(roles, 'kubeGroups'), [])
    assert.deepEqual(unionOf([], 'logins'), [])
  })
})

describe('allows', () => {
  it('grants exact names and "*", nothing by prefix or case', () => {
    const roles = [role('a', { kubeClusters: ['prod'] }), role('b', { databases: ['*'] })]
    assert.equal(allows(roles, 'kubeClusters', 'prod'), true)
    assert.equal(allows(roles, 'kubeClusters', 'prod2'), false)
    assert.equal(allows(roles, 'kubeClusters', 'pro'), false)
    assert.equal(allows(roles, 'kubeClusters', 'Prod'), false)
    assert.equal(allows(roles, 'kubeClusters', '*'), false, '"*" as a requested value is not special')
    assert.equal(allows(roles, 'databases', 'anything'), true)
    assert.equal(allows([], 'databases', 'orders'), false)
  })
})

describe('allowsDbUser', () => {
  it('the user must be granted by a role that also grants the database', () => {
    const roles = [
      role('orders-app', { databases: ['orders'], dbUsers: ['app'], dbNames: ['*'] }),
      role('billing-admin', { databases: ['billing'], dbUsers: ['admin'], dbNames: ['*'] }),
    ]
    assert.equal(allowsDbUser(roles, 'orders', 'app'), true)
    assert.equal(allowsDbUser(roles, 'billing', 'admin'), true)
    assert.equal(allowsDbUser(roles, 'orders', 'admin'), false, 'two roles do not combine into a grant neither makes')
    assert.equal(allowsDbUser(roles, 'billing', 'app'), false)
    assert.equal(allowsDbUser(roles, 'inventory', 'app'), false)
  })

  it('"*" works for databases and users', () => {
    const all = { dbNames: ['*'] }
    assert.equal(allowsDbUser([role('r', { databases: ['*'], dbUsers: ['app'], ...all })], 'any', 'app'), true)
    assert.equal(allowsDbUser([role('r', { databases: ['*'], dbUsers: ['app'], ...all })], 'any', 'root'), false)
    assert.equal(allowsDbUser([role('r', { databases: ['orders'], dbUsers: ['*'], ...all })], 'orders', 'root'), true)
    assert.equal(allowsDbUser([role('r', { databases: ['orders'], dbUsers: [], ...all })], 'orders', 'app'), false, 'no users listed grants none')
  })

  it('database names: none when the role lists none (as in Teleport), else listed or "*"', () => {
    const none = role('none', { databases: ['orders'], dbUsers: ['app'] })
    const named = role('named', { databases: ['orders'], dbUsers: ['app'], dbNames: ['orders_ro'] })
    const star = role('star', { databases: ['orders'], dbUsers: ['app'], dbNames: ['*'] })
    assert.equal(allowsDbUser([none], 'orders', 'app', 'anything'), false)
    assert.equal(allowsDbUser([none], 'orders', 'app'), false)
    assert.equal(allowsDbUser([named], 'orders', 'app', 'orders_ro'), true)
    assert.equal(allowsDbUser([named], 'orders', 'app', 'orders'), false)
    assert.equal(allowsDbUser([named], 'orders', 'app'), false, 'a tunnel naming no database would open any: needs "*"')
    assert.equal(allowsDbUser([star], 'orders', 'app', 'x'), true)
    assert.equal(allowsDbUser([star], 'orders', 'app'), true)
  })
})

describe('denied', () => {
  it('is ERR_ACCESS_DENIED, 403, with the message given', () => {
    const e = denied('role does not allow kube cluster "prod"')
    assert.ok(e instanceof MemidError)
    assert.equal(e.code, 'ERR_ACCESS_DENIED')
    assert.equal(e.status, 403)
    assert.equal(e.message, 'role does not allow kube cluster "prod"')
  })
})

import { MemidError } from '../core/errors.ts'
import type { Role } from '../storage/store.ts'

/** Union of one list field over the roles, sorted and de-duplicated. */
export function unionOf(roles: Role[], field: 'logins' | 'kubeClusters' | 'kubeUsers' | 'kubeGroups' | 'databases' | 'dbUsers' | 'dbNames'): string[] {
  return [...new Set(roles.flatMap((r) => r[field]))].sort()
}

/** True when any role grants `value` for the field, `*` granting everything. */
export function allows(roles: Role[], field: 'kubeClusters' | 'databases' | 'dbUsers' | 'dbNames', value: string): boolean {
  return roles.some((r) => r[field].includes('*') || r[field].includes(value))
}

export function denied(message: string): MemidError {
  return new MemidError('ERR_ACCESS_DENIED', message)
}

/**
 * For a database: the user (and database name) must be allowed by one role that also
 * grants the database, so two roles cannot be combined into a grant neither makes alone.
 * As in Teleport, a role that lists no database names grants none; a tunnel that names no
 * database lets its clients open any, so it needs a role granting `*`.
 */
export function allowsDbUser(roles: Role[], service: string, user: string, database?: string): boolean {
  return roles.some((r) =>
    (r.databases.includes('*') || r.databases.includes(service)) &&
    (r.dbUsers.includes('*') || r.dbUsers.includes(user)) &&
    (r.dbNames.includes('*') || (database !== undefined && r.dbNames.includes(database))))
}

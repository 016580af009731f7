import type { JoinMethodSpec } from './method.ts'

/** GitLab CI: an `id_tokens:` entry of the job, handed to the agent as `$MEMID_ID_TOKEN`. */
export const gitlab: JoinMethodSpec = {
  method: 'gitlab',
  defaultIssuer: 'https://gitlab.com',
  identifying: ['project_path', 'namespace_path', 'sub'],
  recorded: ['project_path', 'pipeline_id'],
}

/** The memid version, reported in heartbeats, status and `--version`. */
export const VERSION = '0.1.0'

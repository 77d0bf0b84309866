//! Client authentication: auth_file (PgBouncer's userlist.txt), the server side of SCRAM,
//! md5, and `cert` (client certificate CN = user name). Stub: lands on the `auth` branch.

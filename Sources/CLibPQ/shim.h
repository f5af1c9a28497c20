// The system libpq (Debian's libpq-dev): ewall sync's connection to the platform's PostgreSQL,
// including the replication protocol (CopyBoth) that postgres-nio does not speak. Only the
// header; EwallSync wraps it.
#include <postgresql/libpq-fe.h>

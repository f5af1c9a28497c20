// The system SQLite (Debian's libsqlite3-dev). Only the header; EwallStore wraps it.
#include <sqlite3.h>

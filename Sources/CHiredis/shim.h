// Debian's hiredis (libhiredis-dev, 0.14): the synchronous client only. EwallRedis runs it on
// threads of its own, never on Swift's cooperative pool.
#include <hiredis/hiredis.h>

#include "homeserver.hpp"

#include <spdlog/spdlog.h>

namespace mxvoip::server {

Homeserver::Homeserver(const Config& config, store::Store& store, asio::thread_pool& blocking,
                       Core::Clock clock)
    : core(config, store, blocking, std::move(clock)),
      info(core),
      accounts(core),
      to_device(core, accounts),
      rooms(core, accounts),
      directory(core, rooms),
      account_data(core, rooms),
      profile(core, accounts, rooms),
      keys(core, accounts, rooms),
      key_backup(core),
      receipts(core, rooms, account_data),
      typing(core, rooms),
      presence(core, accounts, rooms),
      notifications(core, rooms, account_data, receipts),
      pushers(core, accounts, notifications),
      sync(core, rooms, account_data, to_device, keys, receipts, typing, notifications, presence),
      voip(core) {
    // Shared: the position to feed from is read before the modules read the database, so
    // what commits meanwhile is fed to them (each applies a change it already has once).
    if (auto listener = store.listen()) core.share(std::move(listener));
    auto snap = store.load();
    keys.load(snap);
    presence.load(snap);
    if (!core.shared()) core.start_at(snap.max_stream);
    std::lock_guard lock(core.mu);
    spdlog::info("stream position {}, {} users present", core.visible_locked(),
                 snap.presence.size());
}

}  // namespace mxvoip::server

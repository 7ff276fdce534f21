//! A tray host for the app's tests: a `StatusNotifierWatcher` on the private bus, which the app's
//! tray icon (libayatana-appindicator) registers with as it would with a desktop panel; the item's
//! menu is then read and clicked over `com.canonical.dbusmenu`, as the panel does.

use anyhow::Context;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use zbus::message::Header;
use zbus::object_server::SignalEmitter;
use zbus::{OwnedObjectPath, OwnedVariant, Variant};

/// A registered item: its bus name and object path.
type Item = (String, String);

struct Watcher {
    items: Arc<Mutex<Vec<Item>>>,
}

#[zbus::interface(name = "org.kde.StatusNotifierWatcher")]
impl Watcher {
    async fn register_status_notifier_item(
        &self,
        service: &str,
        #[zbus(header)] header: Header<'_>,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
    ) {
        let sender = header.sender().map(|s| s.to_string()).unwrap_or_default();
        // AppIndicator passes its object path; others pass a bus name with the default path.
        let item = if service.starts_with('/') {
            (sender, service.to_owned())
        } else {
            (service.to_owned(), "/StatusNotifierItem".to_owned())
        };
        self.items.lock().unwrap().push(item);
        let _ = Watcher::status_notifier_item_registered(&emitter, service).await;
    }

    fn register_status_notifier_host(&self, _service: &str) {}

    #[zbus(property)]
    fn registered_status_notifier_items(&self) -> Vec<String> {
        self.items
            .lock()
            .unwrap()
            .iter()
            .map(|(name, path)| format!("{name}{path}"))
            .collect()
    }

    #[zbus(property)]
    fn is_status_notifier_host_registered(&self) -> bool {
        true
    }

    #[zbus(property)]
    fn protocol_version(&self) -> i32 {
        0
    }

    #[zbus(signal)]
    async fn status_notifier_item_registered(
        emitter: &SignalEmitter<'_>,
        service: &str,
    ) -> zbus::Result<()>;

    #[zbus(signal)]
    async fn status_notifier_host_registered(emitter: &SignalEmitter<'_>) -> zbus::Result<()>;
}

/// One entry of the tray's menu.
#[derive(Debug, Clone, PartialEq)]
pub struct MenuEntry {
    /// The dbusmenu id, for clicking it.
    pub id: i32,
    /// Its label (empty for a separator).
    pub label: String,
    /// Whether it can be clicked.
    pub enabled: bool,
}

/// The panel's side of the tray.
pub struct TrayHost {
    connection: zbus::Connection,
    items: Arc<Mutex<Vec<Item>>>,
}

impl TrayHost {
    /// Serves `org.kde.StatusNotifierWatcher` on the bus at `address` (start it before the app).
    pub async fn start(address: &str) -> anyhow::Result<TrayHost> {
        let items = Arc::new(Mutex::new(Vec::new()));
        let connection = zbus::connection::Builder::address(address)
            .name("org.kde.StatusNotifierWatcher")
            .serve_at(
                "/StatusNotifierWatcher",
                Watcher {
                    items: items.clone(),
                },
            )
            .build()
            .await?;
        Ok(TrayHost { connection, items })
    }

    async fn menu_proxy(&self) -> anyhow::Result<zbus::Proxy<'static>> {
        let deadline = tokio::time::Instant::now() + crate::WAIT;
        let (name, path) = loop {
            if let Some(item) = self.items.lock().unwrap().first().cloned() {
                break item;
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "no tray item registered"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        };
        let item = zbus::Proxy::new_owned(
            self.connection.clone(),
            name.clone(),
            path,
            "org.kde.StatusNotifierItem",
        )
        .await?;
        let menu: OwnedObjectPath = item.get_property("Menu").await?;
        Ok(zbus::Proxy::new_owned(
            self.connection.clone(),
            name,
            menu,
            "com.canonical.dbusmenu",
        )
        .await?)
    }

    /// The menu's top-level entries, in order.
    pub async fn menu(&self) -> anyhow::Result<Vec<MenuEntry>> {
        let proxy = self.menu_proxy().await?;
        type Layout = (i32, HashMap<String, OwnedVariant>, Vec<OwnedVariant>);
        let (_revision, (_, _, children)): (u32, Layout) = proxy
            .call("GetLayout", &(0i32, 1i32, Vec::<String>::new()))
            .await
            .context("GetLayout")?;
        children
            .into_iter()
            .map(|child| {
                let (id, properties, _): Layout = child.try_into()?;
                let label = properties
                    .get("label")
                    .and_then(|v| String::try_from(v.clone()).ok())
                    .unwrap_or_default();
                let enabled = properties
                    .get("enabled")
                    .and_then(|v| bool::try_from(v).ok())
                    .unwrap_or(true);
                Ok(MenuEntry { id, label, enabled })
            })
            .collect()
    }

    /// Waits until an entry starting with `label` is in the menu.
    pub async fn wait_for_entry(&self, label: &str) -> anyhow::Result<MenuEntry> {
        let deadline = tokio::time::Instant::now() + crate::WAIT;
        loop {
            let menu = self.menu().await?;
            if let Some(entry) = menu.iter().find(|e| e.label.starts_with(label)) {
                return Ok(entry.clone());
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "no tray menu entry {label:?} in {menu:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// Clicks an entry, as the person does in the panel.
    pub async fn click(&self, entry: &MenuEntry) -> anyhow::Result<()> {
        let proxy = self.menu_proxy().await?;
        proxy
            .call::<_, _, ()>("Event", &(entry.id, "clicked", Variant::I32(0), 0u32))
            .await
            .context("Event clicked")?;
        Ok(())
    }
}

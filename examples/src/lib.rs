//! The example service shared by the example binaries: a small inventory.
//!
//! - `quickstart`: provider and consumer in one process, every call mode;
//! - `inventory-provider`: serves [`Inventory`] on an address given by `--listen`;
//! - `inventory-consumer`: calls a provider given by `--server` in every call mode,
//!   or the providers a registry names with `--registry`;
//! - `registry`: the embedded registry.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use rpc_core::service;
use serde::{Deserialize, Serialize};

/// An item to add to the inventory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewItem {
    /// Stock-keeping unit, unique per item.
    pub sku: String,
    /// Human-readable name.
    pub name: String,
    /// Units in stock.
    pub quantity: u32,
    /// Price of one unit in cents.
    pub price_cents: u64,
}

/// An item in the inventory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    /// Assigned when the item was added.
    pub id: u64,
    /// Stock-keeping unit.
    pub sku: String,
    /// Human-readable name.
    pub name: String,
    /// Units in stock.
    pub quantity: u32,
    /// Price of one unit in cents.
    pub price_cents: u64,
}

/// What the inventory service can refuse; delivered to callers typed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum InventoryError {
    /// No item has this SKU.
    NotFound {
        /// The SKU asked for.
        sku: String,
    },
    /// An item with this SKU already exists.
    DuplicateSku {
        /// The SKU.
        sku: String,
    },
    /// Fewer units are in stock than were asked for.
    InsufficientStock {
        /// The SKU.
        sku: String,
        /// Units left.
        available: u32,
    },
}

impl std::fmt::Display for InventoryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InventoryError::NotFound { sku } => write!(f, "no item with SKU {sku}"),
            InventoryError::DuplicateSku { sku } => write!(f, "SKU {sku} already exists"),
            InventoryError::InsufficientStock { sku, available } => {
                write!(f, "only {available} of {sku} in stock")
            }
        }
    }
}

impl std::error::Error for InventoryError {}

/// A warehouse inventory, served remotely.
#[service(name = "example.Inventory")]
pub trait Inventory {
    /// Adds a new item and returns its id.
    async fn add_item(&self, item: NewItem) -> Result<u64, InventoryError>;
    /// Looks an item up by SKU.
    #[idempotent]
    async fn get(&self, sku: String) -> Result<Item, InventoryError>;
    /// Takes `quantity` units out of stock and returns how many are left.
    async fn reserve(&self, sku: String, quantity: u32) -> Result<u32, InventoryError>;
    /// Every item, ordered by SKU.
    #[idempotent]
    async fn list(&self) -> Vec<Item>;
    /// Records an audit event; no response is sent.
    #[oneway]
    async fn audit(&self, event: String);
    /// How many audit events have been recorded.
    #[idempotent]
    async fn audit_count(&self) -> u64;
}

/// The in-memory implementation the example provider serves.
#[derive(Debug, Default)]
pub struct InMemoryInventory {
    /// Items by SKU.
    items: Mutex<BTreeMap<String, Item>>,
    /// Source of item ids.
    next_id: AtomicU64,
    /// Audit events received.
    audits: AtomicU64,
}

impl Inventory for InMemoryInventory {
    async fn add_item(&self, item: NewItem) -> Result<u64, InventoryError> {
        let mut items = self.items.lock().expect("inventory lock");
        if items.contains_key(&item.sku) {
            return Err(InventoryError::DuplicateSku { sku: item.sku });
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        items.insert(
            item.sku.clone(),
            Item {
                id,
                sku: item.sku,
                name: item.name,
                quantity: item.quantity,
                price_cents: item.price_cents,
            },
        );
        Ok(id)
    }

    async fn get(&self, sku: String) -> Result<Item, InventoryError> {
        let items = self.items.lock().expect("inventory lock");
        items
            .get(&sku)
            .cloned()
            .ok_or(InventoryError::NotFound { sku })
    }

    async fn reserve(&self, sku: String, quantity: u32) -> Result<u32, InventoryError> {
        let mut items = self.items.lock().expect("inventory lock");
        let item = items
            .get_mut(&sku)
            .ok_or_else(|| InventoryError::NotFound { sku: sku.clone() })?;
        if item.quantity < quantity {
            return Err(InventoryError::InsufficientStock {
                sku,
                available: item.quantity,
            });
        }
        item.quantity -= quantity;
        Ok(item.quantity)
    }

    async fn list(&self) -> Vec<Item> {
        self.items
            .lock()
            .expect("inventory lock")
            .values()
            .cloned()
            .collect()
    }

    async fn audit(&self, event: String) {
        tracing::info!(%event, "audit");
        self.audits.fetch_add(1, Ordering::Relaxed);
    }

    async fn audit_count(&self) -> u64 {
        self.audits.load(Ordering::Relaxed)
    }
}

/// The inventory's wire name, as registered with the registry.
pub const INVENTORY_SERVICE: &str = "example.Inventory";

/// Completes on Ctrl-C or SIGTERM; logs to stderr at `info` or as `RUST_LOG` says.
/// The example binaries use the registry crate's, like its own binary does.
pub use rpc_registry::{init_logging, shutdown_signal};

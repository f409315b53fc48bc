//! A blocking facade over the async client, for synchronous code.
//!
//! Each blocking object owns a small tokio runtime (one worker thread) that runs its background
//! tasks; methods block the calling thread until the async operation completes. Do not call
//! them from inside an async runtime: use the async types there.
//!
//! ```no_run
//! use std::time::Duration;
//! use sluice_client::blocking::{Consumer, Producer};
//! use sluice_client::{ClientConfig, ConsumerConfig, ProducerConfig, ProducerRecord, Seek, TopicPartition};
//!
//! # fn main() -> Result<(), sluice_client::Error> {
//! let client = ClientConfig::new(["127.0.0.1:9490"]);
//! let producer = Producer::new(ProducerConfig::new(client.clone()))?;
//! let offset = producer.send(ProducerRecord::new("greetings").value("hello"))?.wait()?.offset;
//! producer.close()?;
//!
//! let mut consumer = Consumer::new(ConsumerConfig::new(client))?;
//! let tp = TopicPartition::new("greetings", 0);
//! consumer.assign([tp.clone()]);
//! consumer.seek(&tp, Seek::Earliest)?;
//! let records = consumer.poll(Duration::from_secs(1))?;
//! # Ok(()) }
//! ```

use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Runtime;

use crate::config::{ClientConfig, ConsumerConfig, ProducerConfig};
use crate::consumer::{ConsumerRecord, Seek, TopicPartition};
use crate::error::{Error, Result};
use crate::producer::{ProducerRecord, RecordMetadata};

fn runtime() -> Result<Arc<Runtime>> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("sluice-client")
        .enable_all()
        .build()
        .map(Arc::new)
        .map_err(|e| Error::Config(format!("cannot start the client runtime: {e}")))
}

/// A blocking [`crate::Producer`].
///
/// ```no_run
/// use sluice_client::{blocking::Producer, ClientConfig, ProducerConfig, ProducerRecord};
///
/// # fn main() -> Result<(), sluice_client::Error> {
/// let producer = Producer::new(ProducerConfig::new(ClientConfig::new(["127.0.0.1:9490"])))?;
/// let handle = producer.send(ProducerRecord::new("orders").value("v"))?;
/// println!("{:?}", handle.wait()?);
/// producer.close()?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Producer {
    inner: crate::Producer,
    runtime: Arc<Runtime>,
}

/// The outcome of one send; [`DeliveryHandle::wait`] blocks until it is known.
///
/// ```no_run
/// # fn example(producer: &sluice_client::blocking::Producer) -> Result<(), sluice_client::Error> {
/// use sluice_client::ProducerRecord;
///
/// let handle = producer.send(ProducerRecord::new("orders").value("v"))?;
/// let offset = handle.wait()?.offset;
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[must_use = "a DeliveryHandle reports whether the record was delivered"]
pub struct DeliveryHandle(crate::Delivery);

impl DeliveryHandle {
    pub fn wait(self) -> Result<RecordMetadata> {
        self.0.wait_blocking()
    }
}

impl Producer {
    pub fn new(config: ProducerConfig) -> Result<Producer> {
        let runtime = runtime()?;
        let inner = runtime.block_on(crate::Producer::new(config))?;
        Ok(Producer { inner, runtime })
    }

    /// Queues a record, blocking while the buffer is full; see [`crate::Producer::send`].
    pub fn send(&self, record: ProducerRecord) -> Result<DeliveryHandle> {
        self.runtime
            .block_on(self.inner.send(record))
            .map(DeliveryHandle)
    }

    pub fn flush(&self) -> Result<()> {
        self.runtime.block_on(self.inner.flush())
    }

    pub fn close(&self) -> Result<()> {
        self.runtime.block_on(self.inner.close())
    }
}

/// A blocking [`crate::Consumer`].
///
/// ```no_run
/// use std::time::Duration;
/// use sluice_client::{blocking::Consumer, ClientConfig, ConsumerConfig, TopicPartition};
///
/// # fn main() -> Result<(), sluice_client::Error> {
/// let mut consumer = Consumer::new(ConsumerConfig::new(ClientConfig::new(["127.0.0.1:9490"])))?;
/// consumer.assign([TopicPartition::new("orders", 0)]);
/// for record in consumer.poll(Duration::from_secs(1))? {
///     println!("{}", record.offset);
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Consumer {
    inner: crate::Consumer,
    runtime: Arc<Runtime>,
}

impl Consumer {
    pub fn new(config: ConsumerConfig) -> Result<Consumer> {
        let runtime = runtime()?;
        let inner = {
            let _entered = runtime.enter();
            crate::Consumer::new(config)?
        };
        Ok(Consumer { inner, runtime })
    }

    pub fn assign(&mut self, partitions: impl IntoIterator<Item = TopicPartition>) {
        self.inner.assign(partitions)
    }

    pub fn seek(&mut self, tp: &TopicPartition, to: Seek) -> Result<u64> {
        self.runtime.block_on(self.inner.seek(tp, to))
    }

    pub fn poll(&mut self, timeout: Duration) -> Result<Vec<ConsumerRecord>> {
        self.runtime.block_on(self.inner.poll(timeout))
    }

    pub fn position(&self, tp: &TopicPartition) -> Result<Option<u64>> {
        self.inner.position(tp)
    }

    /// See [`crate::Consumer::subscribe`].
    pub fn subscribe(
        &mut self,
        group: &str,
        subscription: impl Into<crate::Subscription>,
    ) -> Result<()> {
        let _entered = self.runtime.enter();
        self.inner.subscribe(group, subscription)
    }

    /// See [`crate::Consumer::set_rebalance_listener`].
    pub fn set_rebalance_listener(&mut self, listener: impl crate::RebalanceListener + 'static) {
        self.inner.set_rebalance_listener(listener)
    }

    /// The partitions the consumer owns now.
    pub fn assignment(&self) -> Vec<TopicPartition> {
        self.inner.assignment()
    }

    /// See [`crate::Consumer::commit`].
    pub fn commit(&mut self) -> Result<()> {
        self.runtime.block_on(self.inner.commit())
    }

    /// See [`crate::Consumer::committed`].
    pub fn committed(&self, tp: &TopicPartition) -> Result<Option<u64>> {
        self.runtime.block_on(self.inner.committed(tp))
    }

    /// See [`crate::Consumer::close`].
    pub fn close(self) -> Result<()> {
        self.runtime.block_on(self.inner.close())
    }
}

/// A blocking [`crate::Admin`].
///
/// ```no_run
/// use sluice_client::{blocking::Admin, ClientConfig, Seek, TopicPartition};
///
/// # fn main() -> Result<(), sluice_client::Error> {
/// let admin = Admin::new(ClientConfig::new(["127.0.0.1:9490"]))?;
/// admin.create_topic("orders", 6, 1)?;
/// let end = admin.offset(&TopicPartition::new("orders", 0), Seek::Latest)?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Admin {
    inner: crate::Admin,
    runtime: Arc<Runtime>,
}

impl Admin {
    pub fn new(config: ClientConfig) -> Result<Admin> {
        Ok(Admin {
            inner: crate::Admin::new(config)?,
            runtime: runtime()?,
        })
    }

    pub fn create_topic(&self, name: &str, partitions: u32, replication_factor: u32) -> Result<()> {
        self.runtime.block_on(
            self.inner
                .create_topic(name, partitions, replication_factor),
        )
    }

    pub fn delete_topic(&self, name: &str) -> Result<()> {
        self.runtime.block_on(self.inner.delete_topic(name))
    }

    pub fn offset(&self, tp: &TopicPartition, at: Seek) -> Result<Option<u64>> {
        self.runtime.block_on(self.inner.offset(tp, at))
    }

    /// See [`crate::Admin::list_groups`].
    pub fn list_groups(&self) -> Result<Vec<crate::GroupListing>> {
        self.runtime.block_on(self.inner.list_groups())
    }

    /// See [`crate::Admin::describe_group`].
    pub fn describe_group(&self, group: &str) -> Result<crate::GroupDescription> {
        self.runtime.block_on(self.inner.describe_group(group))
    }

    /// See [`crate::Admin::delete_group`].
    pub fn delete_group(&self, group: &str) -> Result<()> {
        self.runtime.block_on(self.inner.delete_group(group))
    }

    /// See [`crate::Admin::reset_offsets`].
    pub fn reset_offsets(&self, group: &str, offsets: &[(TopicPartition, u64)]) -> Result<()> {
        self.runtime
            .block_on(self.inner.reset_offsets(group, offsets))
    }
}

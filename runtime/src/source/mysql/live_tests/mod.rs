//! Live tests of the capture's row renderers against the local MariaDB, and the
//! wide table they share (127.0.0.1:3306, root, no password, binlog_format=ROW,
//! binlog_row_image=FULL, binlog_row_metadata=FULL).

pub const URL: &str = "mysql://root@127.0.0.1:3306/test";

pub const COLUMNS: &str = "
    tenant INT NOT NULL, yr YEAR,
    ti TINYINT, tu TINYINT UNSIGNED, b1 TINYINT(1), bo BOOLEAN,
    si SMALLINT, su SMALLINT UNSIGNED, mi MEDIUMINT, mu MEDIUMINT UNSIGNED,
    i INT, iu INT UNSIGNED, bi BIGINT, bu BIGINT UNSIGNED,
    f FLOAT, d DOUBLE, dec1 DECIMAL(10,2), dec2 DECIMAL(30,10),
    c CHAR(5), v VARCHAR(20) COLLATE utf8mb4_bin, tx TEXT, lat VARCHAR(10) CHARACTER SET latin1,
    bn BINARY(4), vb VARBINARY(8), bl BLOB,
    dt DATE, dt0 DATETIME, dt3 DATETIME(3), dt6 DATETIME(6),
    ts TIMESTAMP NULL, ts1 TIMESTAMP(1) NULL, ts6 TIMESTAMP(6) NULL,
    tm TIME, tm6 TIME(6),
    e ENUM('small','medium','large'), st SET('a','b','c','d'),
    bt1 BIT(1), bt10 BIT(10), j JSON, g GEOMETRY,
    id BIGINT NOT NULL,
    PRIMARY KEY (id, tenant)";

pub const ROW_A: &str = "(1, 2024, -128, 255, 1, 0, -32768, 65535, -8388608, 16777215,
    -2147483648, 4294967295, -9223372036854775808, 18446744073709551615,
    0.1, -1.5e-300, 29.99, -12345678901234567890.0123456789,
    'ab', 'héllo ☃', 'long text', 'café', x'01', x'00ff10', x'deadbeef',
    '2024-02-29', '2024-02-29 13:14:15', '2024-02-29 13:14:15.123', '1969-12-31 23:59:59.999999',
    '2024-02-29 13:14:15', '2024-02-29 13:14:15.5', '2038-01-19 03:14:07.000001',
    '-838:59:59', '-00:00:01.5', 'large', 'a,c', b'1', b'1000000001',
    '{\"a\": [1, 2.5, null], \"b\": \"x\"}', ST_GeomFromText('POINT(1 2)'), 1)";

pub const ROW_B: &str = "(2, 0, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
    NULL, NULL, 0.5, 1.5, '', NULL, NULL, NULL, NULL, NULL, NULL,
    '0000-00-00', '0000-00-00 00:00:00', NULL, NULL, NULL, NULL, NULL,
    '00:00:00', NULL, 'bogus', '', b'0', NULL, NULL, NULL, 1)";

mod binlog_values;
mod query_values;

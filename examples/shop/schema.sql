-- The shop: products and their categories. Unqualified names: runs in the
-- current search_path.
create table if not exists category (
    id   bigint primary key,
    name text not null
);

create table if not exists product (
    id          bigint primary key,
    category_id bigint not null references category (id),
    name        text not null,
    price       numeric(12, 2) not null,
    stock       integer not null
);

create index if not exists product_category on product (category_id);

"""The course's data model: typed SQLAlchemy 2.x declarative classes.

Blog: User 1–N Post 1–N Comment, Post N–M Tag, and a large ``Post.body``.
Dealership: Dealership 1–N Car.

Indexes are deliberately minimal (primary keys and the unique constraints correctness
needs): foreign keys have **no** index yet. Notebook 05 adds them and measures why.

>>> sorted(Base.metadata.tables)[:3]
['cars', 'comments', 'course_meta']
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Column, DateTime, ForeignKey, Integer, String, Table, Text
from sqlalchemy.ext.asyncio import AsyncAttrs
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(AsyncAttrs, DeclarativeBase):
    """Declarative base; ``AsyncAttrs`` adds ``obj.awaitable_attrs`` for explicit async loads."""


post_tags = Table(
    "post_tags",
    Base.metadata,
    Column("post_id", ForeignKey("posts.id"), primary_key=True),
    Column("tag_id", ForeignKey("tags.id"), primary_key=True),
)


class User(Base):
    """A blog author."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(80))
    email: Mapped[str] = mapped_column(String(120), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime)

    posts: Mapped[list[Post]] = relationship(back_populates="author")

    def __repr__(self) -> str:
        return f"User(id={self.id}, name={self.name!r})"


class Post(Base):
    """A blog post with a large body (the candidate for deferred loading)."""

    __tablename__ = "posts"

    id: Mapped[int] = mapped_column(primary_key=True)
    author_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    title: Mapped[str] = mapped_column(String(200))
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime)

    author: Mapped[User] = relationship(back_populates="posts")
    comments: Mapped[list[Comment]] = relationship(back_populates="post")
    tags: Mapped[list[Tag]] = relationship(secondary=post_tags, back_populates="posts")

    def __repr__(self) -> str:
        return f"Post(id={self.id}, title={self.title!r})"


class Comment(Base):
    """A comment on a post, written by a user."""

    __tablename__ = "comments"

    id: Mapped[int] = mapped_column(primary_key=True)
    post_id: Mapped[int] = mapped_column(ForeignKey("posts.id"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    text: Mapped[str] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(DateTime)

    post: Mapped[Post] = relationship(back_populates="comments")
    user: Mapped[User] = relationship()

    def __repr__(self) -> str:
        return f"Comment(id={self.id}, post_id={self.post_id})"


class Tag(Base):
    """A tag; posts and tags are many-to-many through ``post_tags``."""

    __tablename__ = "tags"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50), unique=True)

    posts: Mapped[list[Post]] = relationship(secondary=post_tags, back_populates="tags")

    def __repr__(self) -> str:
        return f"Tag(id={self.id}, name={self.name!r})"


class Dealership(Base):
    """A car dealership (the capstone domain)."""

    __tablename__ = "dealerships"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    city: Mapped[str] = mapped_column(String(80))

    cars: Mapped[list[Car]] = relationship(back_populates="dealership")

    def __repr__(self) -> str:
        return f"Dealership(id={self.id}, name={self.name!r})"


class Car(Base):
    """A car on a dealership's lot; ``price`` is in whole dollars."""

    __tablename__ = "cars"

    id: Mapped[int] = mapped_column(primary_key=True)
    dealership_id: Mapped[int] = mapped_column(ForeignKey("dealerships.id"))
    make: Mapped[str] = mapped_column(String(40))
    model: Mapped[str] = mapped_column(String(40))
    year: Mapped[int] = mapped_column(Integer)
    price: Mapped[int] = mapped_column(Integer)
    is_sold: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime)

    dealership: Mapped[Dealership] = relationship(back_populates="cars")

    def __repr__(self) -> str:
        return f"Car(id={self.id}, {self.year} {self.make} {self.model})"


class CourseMeta(Base):
    """Which dataset a database holds (scale, seed, schema version), so builds are idempotent."""

    __tablename__ = "course_meta"

    key: Mapped[str] = mapped_column(String(40), primary_key=True)
    value: Mapped[str] = mapped_column(String(200))
